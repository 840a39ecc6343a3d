//! Runs an untrusted command inside bubblewrap and reports clearly how it ended.
//!
//! The sandbox is built from unprivileged Linux mechanisms: bubblewrap's
//! namespaces (user, mount, pid, network, ipc, uts, cgroup), a seccomp filter,
//! rlimits, per-job cgroups (memory, pids) where the host lets us create them,
//! a private sized tmpfs for the work folder where the host lets us mount one,
//! and a watchdog thread for the wall clock (and for disk caps when the work
//! folder is a plain folder). See the crate README for which mechanism enforces
//! what, and what falls back where.
//!
//! `unsafe` is confined to the few system calls std does not wrap (setrlimit,
//! memfd, mount, openat with `O_NOFOLLOW`, waitid, kill); each block says why
//! it is sound.

mod cgroup;
mod limits;
mod output;
mod run;
mod seccomp;
mod tree;
mod workdir;

use std::ffi::OsString;
use std::path::PathBuf;

pub use limits::{Limits, Outcome, Status};
pub use output::{read_output, OutputError};
pub use run::{run, LineAction};
pub use seccomp::seccomp_program;
pub use workdir::WorkDir;

/// The Debian package that provides `bwrap`, for "install bubblewrap" messages.
pub const BWRAP_PACKAGE: &str = "bubblewrap";

/// The environment variable that names the bwrap binary to use instead of the
/// one on `PATH`.
pub const BWRAP_ENV: &str = "SANHAK_BWRAP";

/// The `bwrap` binary: `$SANHAK_BWRAP` when set (and an executable file),
/// otherwise the first `bwrap` on `PATH`.
pub fn bwrap_path() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if let Some(explicit) = std::env::var_os(BWRAP_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(explicit);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bwrap"))
        .find(|p| executable(p))
}

/// A host path bound into the sandbox at `guest`.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub guest: PathBuf,
}

impl Bind {
    pub fn new(host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Bind {
        Bind {
            host: host.into(),
            guest: guest.into(),
        }
    }
}

/// Everything `run` needs to start one job.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// argv; `argv[0]` is a path as seen inside the sandbox.
    pub command: Vec<OsString>,
    /// Host folder (a [`WorkDir`]'s path), mounted read-write at guest `/work`.
    pub work: PathBuf,
    /// Working directory inside the sandbox; `/work` when `None`.
    pub cwd: Option<PathBuf>,
    /// Read-only binds (toolchain, lab data, base model, the program binary).
    pub ro_binds: Vec<Bind>,
    /// Devices bound read-write at the same path, e.g. `/dev/nvidia0`,
    /// `/dev/nvidiactl`, `/dev/nvidia-uvm` for GPU jobs.
    pub dev_binds: Vec<PathBuf>,
    /// The only environment inside, on top of `PATH=/usr/bin:/bin` and
    /// `HOME=/work` (which entries here override).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// uid inside the user namespace.
    pub uid: u32,
    /// gid inside the user namespace.
    pub gid: u32,
    /// The host account (uid, gid) that bwrap, and so every process of the
    /// job, runs as; `None`: the worker's own. A root worker should name an
    /// unprivileged account here, so that the job is not host root even
    /// outside its user namespace. That account must be able to reach the
    /// work folder (create it with [`WorkDir::create_owned`]) and read the
    /// bind sources (every parent folder traversable).
    pub host_user: Option<(u32, u32)>,
    /// Set by the caller (e.g. when the job is cancelled) to kill the job
    /// within a watchdog tick, even if it prints nothing; it then ends as
    /// [`Status::Stopped`].
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// When set, holds bwrap's host pid while the job runs (0 before it
    /// starts and from the moment bwrap has exited, before its pid can be
    /// recycled). Every process of the job descends from it, so a caller can
    /// tell which job a host pid belongs to (e.g. a GPU memory watchdog that
    /// reads pids from `nvidia-smi`).
    pub pid: Option<std::sync::Arc<std::sync::atomic::AtomicI32>>,
}

/// The guest path where the work folder is mounted.
pub const GUEST_WORK: &str = "/work";

impl SandboxSpec {
    /// A spec with default limits, uid/gid 1000, no binds and no extra env.
    pub fn new(command: Vec<OsString>, work: impl Into<PathBuf>) -> SandboxSpec {
        SandboxSpec {
            command,
            work: work.into(),
            cwd: None,
            ro_binds: Vec::new(),
            dev_binds: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            uid: 1000,
            gid: 1000,
            host_user: None,
            cancel: None,
            pid: None,
        }
    }

    /// Gives the job the GPUs with these host indices (`/dev/nvidiaN`, as
    /// `nvidia-smi` numbers them) plus the driver's control nodes
    /// ([`NVIDIA_CONTROL_DEVICES`]); no other GPU's node is bound, and
    /// `/dev/nvidia-uvm-tools` never is.
    pub fn add_gpus(&mut self, host_indices: &[u32]) {
        for i in host_indices {
            let node = PathBuf::from(format!("/dev/nvidia{i}"));
            if !self.dev_binds.contains(&node) {
                self.dev_binds.push(node);
            }
        }
        for node in NVIDIA_CONTROL_DEVICES {
            let node = PathBuf::from(node);
            if !self.dev_binds.contains(&node) {
                self.dev_binds.push(node);
            }
        }
    }

    /// Binds host library folders (the CUDA driver and libraries) read-only
    /// at the same paths and puts them on `LD_LIBRARY_PATH` inside, in this
    /// order. Folders under `/usr` are already visible and are only added to
    /// the path.
    pub fn add_library_dirs(&mut self, dirs: &[PathBuf]) {
        if dirs.is_empty() {
            return;
        }
        for d in dirs {
            if !d.starts_with("/usr") && !self.ro_binds.iter().any(|b| &b.guest == d) {
                self.ro_binds.push(Bind::new(d, d));
            }
        }
        let path = std::env::join_paths(dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.env.retain(|(k, _)| k != "LD_LIBRARY_PATH");
        self.env.push(("LD_LIBRARY_PATH".into(), path));
    }
}

/// The NVIDIA device nodes every GPU job needs besides its own `/dev/nvidiaN`.
pub const NVIDIA_CONTROL_DEVICES: [&str; 2] = ["/dev/nvidiactl", "/dev/nvidia-uvm"];

/// Device nodes no sandbox may get: `/dev/nvidia-uvm-tools` is a profiling
/// side channel into other jobs' GPU work.
pub const FORBIDDEN_DEVICES: [&str; 1] = ["/dev/nvidia-uvm-tools"];

/// Why a job could not be run at all. These are infrastructure faults, not the
/// student's: the caller should retry or alert, never blame the submission.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("bubblewrap (bwrap) is not installed: install the Debian package `bubblewrap`")]
    BwrapMissing,
    #[error("the sandbox spec is invalid: {0}")]
    InvalidSpec(String),
    #[error("could not build the seccomp filter: {0}")]
    Seccomp(String),
    /// bwrap started but never got as far as running the command (a mount
    /// or namespace step failed, or `command[0]` could not be executed).
    /// Detected with `--json-status-fd`: bwrap reports an exit code only for
    /// a command it managed to exec, so the command cannot fake this.
    #[error("bubblewrap could not start the job: {0}")]
    BwrapFailed(String),
    #[error("sandbox setup failed while {context}: {source}")]
    Setup {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    pub(crate) fn setup(context: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
        move |source| SandboxError::Setup { context, source }
    }
}
