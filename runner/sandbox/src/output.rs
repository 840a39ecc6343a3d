//! Reading back what the sandbox wrote, without trusting it.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use crate::limits::describe_bytes;

/// Why an output file could not be read. The messages are meant for students.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the program finished without writing its output file")]
    Missing,
    #[error("the output is not a regular file (it is a symbolic link, a folder or a device); write the file itself")]
    NotRegular,
    #[error("the output file is a hard link to another file; write it as a new file")]
    HardLinked,
    #[error("the output file is larger than the limit of {}", describe_bytes(*limit))]
    TooLarge { limit: u64 },
    #[error("the output path must be a plain relative path inside the work folder")]
    BadPath,
    #[error("could not read the output file: {0}")]
    Io(#[from] io::Error),
}

/// Reads `relative` under `work` as the sandbox left it, safely:
///
/// - `relative` must be a plain relative path (no `..`, `.`, root or empty
///   components);
/// - every component is opened with `openat(…, O_NOFOLLOW)` from the previous
///   one, so a symlink anywhere in the path is refused, as is a folder swapped
///   for a symlink while we read;
/// - the file must be a regular file with exactly one link (a hard link to
///   another file in `/work` is refused);
/// - at most `max_bytes` are read: checked with `fstat` and while reading.
pub fn read_output(work: &Path, relative: &str, max_bytes: u64) -> Result<Vec<u8>, OutputError> {
    let names = components(relative)?;
    let (last, dirs) = names.split_last().ok_or(OutputError::BadPath)?;

    let work_c = CString::new(work.as_os_str().as_bytes()).map_err(|_| OutputError::BadPath)?;
    // The work folder itself is trusted (the caller created it); what is inside is not.
    let mut dir = open_at(
        libc::AT_FDCWD,
        &work_c,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    )
    .map_err(OutputError::Io)?;
    for name in dirs {
        dir = open_at(
            dir.as_raw_fd(),
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
        .map_err(classify)?;
    }
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let fd = open_at(
        dir.as_raw_fd(),
        last,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
    )
    .map_err(classify)?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(OutputError::NotRegular);
    }
    if meta.nlink() != 1 {
        return Err(OutputError::HardLinked);
    }
    if meta.len() > max_bytes {
        return Err(OutputError::TooLarge { limit: max_bytes });
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may still grow (a leftover writer): never read past the cap.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max_bytes {
        return Err(OutputError::TooLarge { limit: max_bytes });
    }
    Ok(buf)
}

fn components(relative: &str) -> Result<Vec<CString>, OutputError> {
    if relative.is_empty() || relative.contains('\0') {
        return Err(OutputError::BadPath);
    }
    // `Path::components` hides "." in the middle and repeated slashes; refuse
    // them explicitly so only one spelling of each path is accepted.
    if relative
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(OutputError::BadPath);
    }
    Path::new(relative)
        .components()
        .map(|c| match c {
            Component::Normal(name) => {
                CString::new(name.as_bytes()).map_err(|_| OutputError::BadPath)
            }
            _ => Err(OutputError::BadPath),
        })
        .collect()
}

fn open_at(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // `dir` is AT_FDCWD or an fd we own and keep open for the call.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat, so it is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn classify(e: io::Error) -> OutputError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => OutputError::Missing,
        // ELOOP: a symlink met with O_NOFOLLOW; ENOTDIR: a file (or a symlink,
        // with O_DIRECTORY|O_NOFOLLOW) where a folder was expected.
        Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::ENXIO) => OutputError::NotRegular,
        _ => OutputError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rejection() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            "..",
            ".",
            "a\0b",
        ] {
            assert!(
                matches!(read_output(dir.path(), bad, 10), Err(OutputError::BadPath)),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn reads_regular_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path();
        std::fs::create_dir(work.join("sub")).expect("mkdir");
        std::fs::write(work.join("sub/out.txt"), b"hello").expect("write");
        assert_eq!(
            read_output(work, "sub/out.txt", 5).expect("read"),
            b"hello".to_vec()
        );
        assert!(matches!(
            read_output(work, "sub/out.txt", 4),
            Err(OutputError::TooLarge { limit: 4 })
        ));
        assert!(matches!(
            read_output(work, "nope.txt", 4),
            Err(OutputError::Missing)
        ));
        assert!(matches!(
            read_output(work, "sub", 4),
            Err(OutputError::NotRegular)
        ));
        std::os::unix::fs::symlink(work.join("sub/out.txt"), work.join("link")).expect("symlink");
        assert!(matches!(
            read_output(work, "link", 100),
            Err(OutputError::NotRegular)
        ));
        std::os::unix::fs::symlink(work.join("sub"), work.join("dirlink")).expect("symlink");
        assert!(matches!(
            read_output(work, "dirlink/out.txt", 100),
            Err(OutputError::NotRegular)
        ));
        std::fs::hard_link(work.join("sub/out.txt"), work.join("hard")).expect("link");
        assert!(matches!(
            read_output(work, "hard", 100),
            Err(OutputError::HardLinked)
        ));
        assert!(matches!(
            read_output(work, "sub/out.txt/x", 100),
            Err(OutputError::NotRegular)
        ));
        let fifo = CString::new(work.join("fifo").as_os_str().as_bytes()).expect("cstring");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_output(work, "fifo", 100),
            Err(OutputError::NotRegular)
        ));
        let msg = OutputError::TooLarge { limit: 1 << 20 }.to_string();
        assert!(msg.contains("1 MiB"), "{msg}");
    }
}
