//! The runner's cache of lab packages, by content hash.
//!
//! Files arrive one by one from the app (`GET /labs/{id}/files/{sha256}`),
//! are checked against their hash and kept under `blobs/`. A package is then
//! laid out twice under `labs/<package hash>/`:
//! - `public/`: what a training sandbox may see (no hidden splits, no
//!   reference solution);
//! - `full/`: everything, for the trusted grader outside the sandbox.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::protocol::{sha256_hex, LabFile, LabPackage};

/// Where one package is laid out.
#[derive(Debug, Clone)]
pub struct LabDirs {
    /// Mounted read-only into sandboxes.
    pub public: PathBuf,
    /// Read by the grader only.
    pub full: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("lab file {path}: content hash mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("lab package {id}: unsafe path `{path}`")]
    UnsafePath { id: String, path: String },
    #[error("lab package {id}: hash does not match its files")]
    PackageHash { id: String },
    #[error("lab cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A lab-package cache rooted at a folder.
#[derive(Debug, Clone)]
pub struct LabCache {
    root: PathBuf,
}

fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn is_hex_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl LabCache {
    pub fn new(root: impl Into<PathBuf>) -> LabCache {
        LabCache { root: root.into() }
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    fn dirs(&self, package: &LabPackage) -> LabDirs {
        let base = self.root.join("labs").join(&package.hash);
        LabDirs {
            public: base.join("public").join(&package.id),
            full: base.join("full").join(&package.id),
        }
    }

    /// Checks a package listing before anything is fetched: safe paths,
    /// well-formed hashes, and a package hash that matches the files.
    pub fn check(&self, package: &LabPackage) -> Result<(), CacheError> {
        for f in &package.files {
            if !safe_relative(&f.path) || !is_hex_hash(&f.sha256) {
                return Err(CacheError::UnsafePath {
                    id: package.id.clone(),
                    path: f.path.clone(),
                });
            }
        }
        if !crate::lab::is_lab_id(&package.id) {
            return Err(CacheError::UnsafePath {
                id: package.id.clone(),
                path: package.id.clone(),
            });
        }
        if !is_hex_hash(&package.hash) || LabPackage::hash_of(&package.files) != package.hash {
            return Err(CacheError::PackageHash {
                id: package.id.clone(),
            });
        }
        Ok(())
    }

    /// The laid-out package, if it is already complete.
    pub fn ready(&self, package: &LabPackage) -> Option<LabDirs> {
        let dirs = self.dirs(package);
        (dirs.full.is_dir() && dirs.public.is_dir()).then_some(dirs)
    }

    /// Files whose content is not cached yet.
    pub fn missing<'a>(&self, package: &'a LabPackage) -> Vec<&'a LabFile> {
        package
            .files
            .iter()
            .filter(|f| !self.blob_path(&f.sha256).is_file())
            .collect()
    }

    /// Stores one file's content after checking its hash.
    pub fn put_blob(&self, file: &LabFile, bytes: &[u8]) -> Result<(), CacheError> {
        let actual = sha256_hex(bytes);
        if actual != file.sha256 {
            return Err(CacheError::HashMismatch {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                actual,
            });
        }
        let dir = self.root.join("blobs");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        fs::write(tmp.path(), bytes).map_err(io_err(tmp.path()))?;
        let dest = self.blob_path(&file.sha256);
        tmp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Lays out a package whose files are all cached. Safe against a
    /// concurrent layout of the same package: each builds in a temporary
    /// folder and the first rename wins.
    pub fn materialize(&self, package: &LabPackage) -> Result<LabDirs, CacheError> {
        self.check(package)?;
        if let Some(dirs) = self.ready(package) {
            return Ok(dirs);
        }
        let labs = self.root.join("labs");
        fs::create_dir_all(&labs).map_err(io_err(&labs))?;
        let tmp = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&labs)
            .map_err(io_err(&labs))?;
        for f in &package.files {
            let blob = self.blob_path(&f.sha256);
            let mut targets = vec![tmp.path().join("full").join(&package.id).join(&f.path)];
            if !f.trusted {
                targets.push(tmp.path().join("public").join(&package.id).join(&f.path));
            }
            for target in targets {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                // Copies, not hard links: a package folder never shares an
                // inode with the blob store or with another package.
                fs::copy(&blob, &target).map_err(io_err(&target))?;
            }
        }
        for side in ["public", "full"] {
            let d = tmp.path().join(side).join(&package.id);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let dest = labs.join(&package.hash);
        let built = tmp.keep();
        if let Err(first) = fs::rename(&built, &dest) {
            if self.ready(package).is_some() {
                // Another job laid it out first.
                let _ = fs::remove_dir_all(&built);
            } else if dest.exists() {
                // A stale or partial layout (e.g. from an older runner): replace it.
                fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
                fs::rename(&built, &dest).map_err(io_err(&dest))?;
            } else {
                let _ = fs::remove_dir_all(&built);
                return Err(io_err(&dest)(first));
            }
        }
        Ok(self.dirs(package))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8], trusted: bool) -> LabFile {
        LabFile {
            path: path.into(),
            sha256: sha256_hex(content),
            bytes: content.len() as u64,
            trusted,
        }
    }

    fn package(files: Vec<LabFile>) -> LabPackage {
        LabPackage {
            id: "demo".into(),
            version: "1".into(),
            hash: LabPackage::hash_of(&files),
            files,
        }
    }

    #[test]
    fn public_tree_has_no_trusted_files_and_full_has_all() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LabCache::new(dir.path());
        let files = vec![
            file("lab.toml", b"id = 1", false),
            file("data/train.txt", b"train", false),
            file("hidden/test.txt", b"secret labels", true),
        ];
        let contents: Vec<&[u8]> = vec![b"id = 1", b"train", b"secret labels"];
        let pkg = package(files.clone());
        assert_eq!(cache.missing(&pkg).len(), 3);
        for (f, c) in files.iter().zip(contents) {
            cache.put_blob(f, c).unwrap();
        }
        assert!(cache.missing(&pkg).is_empty());
        let dirs = cache.materialize(&pkg).unwrap();
        assert!(dirs.public.join("data/train.txt").is_file());
        assert!(!dirs.public.join("hidden").exists());
        assert_eq!(
            fs::read(dirs.full.join("hidden/test.txt")).unwrap(),
            b"secret labels"
        );
        // A second call reuses the layout.
        assert_eq!(cache.materialize(&pkg).unwrap().full, dirs.full);
    }

    #[test]
    fn a_blob_with_the_wrong_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LabCache::new(dir.path());
        let f = file("data/x", b"right", false);
        let err = cache.put_blob(&f, b"wrong").unwrap_err();
        assert!(matches!(err, CacheError::HashMismatch { .. }), "{err}");
        assert!(cache.missing(&package(vec![f])).len() == 1);
    }

    #[test]
    fn unsafe_paths_and_forged_package_hashes_are_refused() {
        let cache = LabCache::new("/nonexistent");
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            let pkg = package(vec![file(bad, b"x", false)]);
            assert!(
                matches!(cache.check(&pkg), Err(CacheError::UnsafePath { .. })),
                "{bad}"
            );
        }
        let mut pkg = package(vec![file("a", b"x", false)]);
        pkg.hash = "0".repeat(64);
        assert!(matches!(
            cache.check(&pkg),
            Err(CacheError::PackageHash { .. })
        ));
    }
}
