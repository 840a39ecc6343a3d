//! What a training sandbox sees of a lab: the package without `hidden/` and
//! `solution/`, which `Lab::load_public` accepts and `Lab::load` does not.

use std::path::Path;

use sanhak_runner::lab::Lab;

fn copy_public(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let rel = Path::new(entry.file_name().as_os_str()).to_path_buf();
        if Lab::is_trusted_only(&rel) {
            continue;
        }
        let target = to.join(&rel);
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_public(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_public_copy_loads_for_training_but_not_for_grading() {
    for id in ["fashion-transfer", "korean-lm-adapt", "sentiment-finetune"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../labs")
            .join(id);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        copy_public(&src, &dir);
        assert!(!dir.join("hidden").exists() && !dir.join("solution").exists());

        let lab = Lab::load_public(&dir).unwrap_or_else(|e| panic!("{id}: {e}"));
        // The declaration is checked; the file is not there to read.
        let split = lab.manifest.grading.split.clone();
        let role = lab.manifest.data[&split].keys().next().unwrap().clone();
        let hidden = lab.hidden_file(&split, &role).unwrap();
        assert!(!hidden.exists(), "{id}: {}", hidden.display());

        let err = Lab::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("solution") || err.contains("hidden/"),
            "{id}: {err}"
        );
    }
}

#[test]
fn trusted_only_paths() {
    for p in ["hidden/test.idx", "solution/recipe.toml", "hidden"] {
        assert!(Lab::is_trusted_only(Path::new(p)), "{p}");
    }
    for p in [
        "data/train.idx",
        "starter/recipe.toml",
        "lab.toml",
        "README.md",
    ] {
        assert!(!Lab::is_trusted_only(Path::new(p)), "{p}");
    }
}
