//! The per-job work folder, mounted at `/work` in the sandbox.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::Limits;

const TMPFS_MAGIC: libc::__fsword_t = 0x0102_1994;

/// A per-job work folder. Where the host allows it (root, mounts permitted)
/// it is a private tmpfs of `work_bytes` and `work_inodes`, so the kernel
/// enforces the disk caps; otherwise it is a plain folder and [`crate::run`]
/// enforces the caps with a watchdog. Dropping it unmounts the tmpfs and
/// removes the folder.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    tmpfs: bool,
}

impl WorkDir {
    /// Creates `path` (which must not exist yet, or be an empty folder) and
    /// mounts a private tmpfs there when the host allows it.
    pub fn create(path: &Path, limits: &Limits) -> io::Result<WorkDir> {
        Self::create_owned(path, limits, None)
    }

    /// As [`WorkDir::create`], owned by `owner` (host uid, gid) instead of
    /// this process: for jobs run with [`crate::SandboxSpec::host_user`].
    /// Changing the owner needs root.
    pub fn create_owned(
        path: &Path,
        limits: &Limits,
        owner: Option<(u32, u32)>,
    ) -> io::Result<WorkDir> {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if std::fs::read_dir(path)?.next().is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("work folder {} exists and is not empty", path.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        // Owned by whoever runs bwrap (us, or `owner`), mode 0700: that
        // account maps to the sandbox uid inside, so the job can write and
        // nobody else on the host can.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // SAFETY: geteuid/getegid cannot fail and have no preconditions.
        let (uid, gid) = owner.unwrap_or_else(|| unsafe { (libc::geteuid(), libc::getegid()) });
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        let tmpfs = match mount_tmpfs(path, limits, uid, gid) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e,
                    "no tmpfs for the work folder; disk caps fall back to the watchdog");
                false
            }
        };
        Ok(WorkDir {
            path: path.to_path_buf(),
            tmpfs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes a work folder left by a runner that died mid-job: unmounts its
    /// tmpfs if one is still mounted there, then deletes it. A missing folder is fine.
    pub fn remove_stale(path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path. EINVAL (not a mount point) and
        // ENOENT are expected and ignored.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOENT | libc::EPERM)
            ) {
                return Err(e);
            }
        }
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the kernel enforces the disk caps (a sized tmpfs is mounted).
    pub fn is_tmpfs(&self) -> bool {
        self.tmpfs
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.tmpfs {
            if let Ok(c) = CString::new(self.path.as_os_str().as_bytes()) {
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    tracing::warn!(path = %self.path.display(), error = %io::Error::last_os_error(),
                        "could not unmount the work tmpfs");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the work folder");
            }
        }
    }
}

fn mount_tmpfs(path: &Path, limits: &Limits, uid: u32, gid: u32) -> io::Result<()> {
    let options = format!(
        "size={},nr_inodes={},mode=0700,uid={uid},gid={gid}",
        limits.work_bytes.max(4096),
        limits.work_inodes.max(2)
    );
    let target = CString::new(path.as_os_str().as_bytes())?;
    let source = CString::new("sanhak-work")?;
    let fstype = CString::new("tmpfs")?;
    let data = CString::new(options)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Keep the mount out of other mount namespaces' view changes.
    // SAFETY: as above; a null source/fstype/data is allowed for MS_PRIVATE.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not make the work tmpfs private");
    }
    Ok(())
}

/// Whether `path` is itself the root of a tmpfs mount (then its size and
/// inode caps are enforced by the kernel).
pub(crate) fn is_tmpfs_mount(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let parent_dev = path
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev());
    if parent_dev == Some(meta.dev()) {
        return false;
    }
    statfs(path).is_some_and(|s| s.f_type == TMPFS_MAGIC)
}

pub(crate) fn statfs(path: &Path) -> Option<libc::statfs> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value for this plain C struct.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out-pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0).then_some(buf)
}

/// Whether the tmpfs at `path` is (nearly) out of blocks or inodes.
pub(crate) fn tmpfs_full(path: &Path) -> bool {
    statfs(path).is_some_and(|s| {
        let block = s.f_bsize as u64;
        let free_bytes = s.f_bavail.saturating_mul(block);
        free_bytes < 64 * 1024 || s.f_ffree < 2
    })
}

/// Bytes (allocated) and inodes under `root`, not following symlinks; stops
/// counting once `max_inodes` is passed.
pub(crate) fn usage(root: &Path, max_inodes: u64) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            inodes += 1;
            if inodes > max_inodes {
                return (bytes, inodes);
            }
            let Ok(meta) = entry.metadata() else { continue };
            bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            if meta.file_type().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_is_created_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("job");
        let limits = Limits {
            work_bytes: 1 << 20,
            work_inodes: 100,
            ..Limits::default()
        };
        {
            let work = WorkDir::create(&path, &limits).expect("create");
            assert_eq!(work.path(), path);
            assert!(path.is_dir());
            assert_eq!(work.is_tmpfs(), is_tmpfs_mount(&path));
            std::fs::write(path.join("f"), b"x").expect("write");
            if work.is_tmpfs() {
                let s = statfs(&path).expect("statfs");
                assert!((s.f_blocks as u64) * (s.f_bsize as u64) <= 1 << 20);
                // a file over the size cap fails with ENOSPC
                let big = vec![0u8; 2 << 20];
                let err = std::fs::write(path.join("big"), big).expect_err("ENOSPC");
                assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            }
        }
        assert!(!path.exists());
    }

    #[test]
    fn usage_counts_files_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/b"), vec![1u8; 10000]).expect("write");
        let (bytes, inodes) = usage(dir.path(), 100);
        assert_eq!(inodes, 2);
        assert!(bytes >= 8192, "{bytes}");
    }
}
