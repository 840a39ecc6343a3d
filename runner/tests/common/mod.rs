// Shared helpers of the runner's integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fashion_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/fashion-transfer")
}

/// Copy a folder tree (regular files only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ty.is_file() {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A copy of the fashion-transfer lab in a temporary folder named like the lab.
pub fn lab_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fashion-transfer");
    copy_tree(&fashion_dir(), &dir);
    (tmp, dir)
}
