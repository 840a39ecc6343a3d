//! Uploaded files (CVs, project files): strict checks before anything is
//! written, then content-addressed storage under `<data_dir>/files/`.
//!
//! A file is accepted only when its name is a plain file name (no folders,
//! no `..`, no control characters), its size is within the limit, and its
//! bytes are what its extension claims (checked by magic number, or as UTF-8
//! text for text types). Nothing is written until every check passed, and
//! the bytes are written to a temporary file and renamed into place, so a
//! failed upload leaves nothing behind.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::domain::MessageKey;

/// The largest CV accepted.
pub const MAX_CV_BYTES: usize = 5 * 1024 * 1024;
/// The largest project file accepted.
pub const MAX_PROJECT_FILE_BYTES: usize = 20 * 1024 * 1024;

/// A type of file that may be uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    Pdf,
    Png,
    Jpeg,
    Zip,
    /// UTF-8 text: .txt, .md, .csv, .json, .toml, .rs, .py
    Text,
}

impl FileType {
    /// What the name's extension says the file is.
    fn of_name(name: &str) -> Option<(Self, &'static str)> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "pdf" => (Self::Pdf, "application/pdf"),
            "png" => (Self::Png, "image/png"),
            "jpg" | "jpeg" => (Self::Jpeg, "image/jpeg"),
            "zip" => (Self::Zip, "application/zip"),
            "txt" | "md" | "rs" | "py" | "toml" => (Self::Text, "text/plain; charset=utf-8"),
            "csv" => (Self::Text, "text/csv; charset=utf-8"),
            "json" => (Self::Text, "application/json"),
            _ => return None,
        })
    }

    /// Whether the bytes really are of this type.
    fn matches(self, bytes: &[u8]) -> bool {
        match self {
            Self::Pdf => bytes.starts_with(b"%PDF-"),
            Self::Png => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            Self::Jpeg => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
            Self::Zip => bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06"),
            Self::Text => std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0),
        }
    }
}

/// An upload that passed its checks, not yet stored.
#[derive(Debug)]
pub struct CheckedUpload {
    pub name: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Checks an upload against the allowed types and size; nothing is written.
pub fn check(
    name: &str,
    bytes: Vec<u8>,
    allowed: &[FileType],
    max_bytes: usize,
) -> Result<CheckedUpload, MessageKey> {
    let name = clean_name(name)?;
    if bytes.is_empty() {
        return Err("file_empty");
    }
    if bytes.len() > max_bytes {
        return Err("file_too_large");
    }
    let Some((kind, content_type)) = FileType::of_name(&name) else {
        return Err("file_type_not_allowed");
    };
    if !allowed.contains(&kind) {
        return Err("file_type_not_allowed");
    }
    if !kind.matches(&bytes) {
        return Err("file_type_mismatch");
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(CheckedUpload {
        name,
        content_type,
        bytes,
        sha256,
    })
}

/// A plain file name: no folders, no `..`, no hidden files, no control or
/// shell-special characters, at most 120 characters.
pub fn clean_name(raw: &str) -> Result<String, MessageKey> {
    let name = raw.trim();
    let bad = name.is_empty()
        || name.chars().count() > 120
        || name.starts_with('.')
        || name.contains(['/', '\\', ':', '*', '?', '"', '<', '>', '|'])
        || name.contains("..")
        || name.chars().any(char::is_control);
    if bad {
        Err("file_name_invalid")
    } else {
        Ok(name.to_owned())
    }
}

/// Where a stored file's bytes live.
pub fn path_of(data_dir: &Path, sha256: &str) -> Option<PathBuf> {
    let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| data_dir.join("files").join(&sha256[..2]).join(sha256))
}

/// Writes the bytes to their content address (a no-op when already there).
pub async fn store(data_dir: &Path, upload: &CheckedUpload) -> anyhow::Result<()> {
    let path =
        path_of(data_dir, &upload.sha256).ok_or_else(|| anyhow::anyhow!("bad content hash"))?;
    if tokio::fs::try_exists(&path).await? {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no parent folder"))?
        .to_owned();
    let bytes = upload.bytes.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        std::io::Write::write_all(&mut tmp, &bytes)?;
        tmp.persist(&path)?;
        Ok(())
    })
    .await?
}

/// Reads a stored file's bytes.
pub async fn read(data_dir: &Path, sha256: &str) -> anyhow::Result<Vec<u8>> {
    let path = path_of(data_dir, sha256).ok_or_else(|| anyhow::anyhow!("bad content hash"))?;
    Ok(tokio::fs::read(path).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_path_tricks_are_refused() {
        for bad in [
            "../cv.pdf",
            "a/../../etc/passwd",
            "/etc/passwd",
            "..\\win.pdf",
            ".hidden.pdf",
            "c:cv.pdf",
            "cv\n.pdf",
            "",
        ] {
            assert_eq!(clean_name(bad), Err("file_name_invalid"), "{bad:?}");
        }
        assert_eq!(clean_name(" 이력서 v2.pdf ").unwrap(), "이력서 v2.pdf");
    }

    #[test]
    fn type_is_checked_by_content() {
        let pdf = b"%PDF-1.7\n...".to_vec();
        assert!(check("cv.pdf", pdf.clone(), &[FileType::Pdf], 1024).is_ok());
        assert_eq!(
            check("cv.pdf", b"MZ\x90\x00".to_vec(), &[FileType::Pdf], 1024).unwrap_err(),
            "file_type_mismatch"
        );
        assert_eq!(
            check("cv.exe", pdf.clone(), &[FileType::Pdf], 1024).unwrap_err(),
            "file_type_not_allowed"
        );
        assert_eq!(
            check("notes.txt", b"hi".to_vec(), &[FileType::Pdf], 1024).unwrap_err(),
            "file_type_not_allowed"
        );
        assert_eq!(
            check("cv.pdf", pdf, &[FileType::Pdf], 4).unwrap_err(),
            "file_too_large"
        );
        assert_eq!(
            check("a.txt", vec![0xff, 0xfe], &[FileType::Text], 64).unwrap_err(),
            "file_type_mismatch"
        );
    }

    #[test]
    fn content_addresses_are_hex_only() {
        let dir = Path::new("/data");
        assert!(path_of(dir, "../../etc/passwd").is_none());
        let h = "a".repeat(64);
        assert_eq!(
            path_of(dir, &h).unwrap(),
            Path::new("/data/files/aa").join(&h)
        );
    }
}
