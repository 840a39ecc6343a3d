//! What a job may use, and how it ended.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Caps on one job. Every cap is enforced by some mechanism; `Outcome::enforced`
/// says which were in force for a given run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time from start to kill.
    pub wall: Duration,
    /// CPU seconds (RLIMIT_CPU, per process); `None` for no CPU cap.
    pub cpu_seconds: Option<u64>,
    /// Memory of the whole job (cgroup memory limit, swap included).
    pub memory_bytes: u64,
    /// Processes and threads of the whole job (cgroup pids limit).
    pub pids: u64,
    /// Largest single file the job may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Open file descriptors per process (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Total bytes in `/work`.
    pub work_bytes: u64,
    /// Total files and folders in `/work`.
    pub work_inodes: u64,
    /// Size of the private `/tmp`.
    pub tmp_bytes: u64,
    /// Total stdout; past it the job is killed.
    pub stdout_bytes: u64,
    /// How much of stderr is kept (the tail).
    pub stderr_bytes: u64,
    /// Longest stdout line handed to the caller; longer lines are cut.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wall: Duration::from_secs(10 * 60),
            cpu_seconds: None,
            memory_bytes: 4 * GIB,
            pids: 256,
            file_size_bytes: GIB,
            open_files: 256,
            work_bytes: 2 * GIB,
            work_inodes: 10_000,
            tmp_bytes: 256 * MIB,
            stdout_bytes: 16 * MIB,
            stderr_bytes: MIB,
            max_line_bytes: 64 * KIB as usize,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// The command exited by itself with this code.
    Exited { code: i32 },
    /// The command was killed by this signal (not by us).
    Signalled { signal: i32 },
    /// It ran past `Limits::wall` and was killed.
    WallTimeout,
    /// The memory cgroup's OOM killer fired.
    MemoryLimit,
    /// It tried to start more processes/threads than `Limits::pids`.
    PidsLimit,
    /// It wrote more than `Limits::stdout_bytes` to stdout and was killed.
    OutputLimit,
    /// It filled `/work` (bytes or files).
    DiskLimit,
    /// The caller stopped it (`LineAction::Stop`).
    Stopped,
}

impl Status {
    /// Exited by itself with code 0.
    pub fn success(&self) -> bool {
        matches!(self, Status::Exited { code: 0 })
    }

    /// A clear sentence for students, e.g. "ran out of memory (limit 4096 MiB)".
    pub fn describe(&self, limits: &Limits) -> String {
        match self {
            Status::Exited { code: 0 } => "finished successfully".to_string(),
            Status::Exited { code } => format!("exited with code {code}"),
            Status::Signalled { signal } => match signal_name(*signal) {
                Some(name) => format!("was killed by signal {signal} ({name})"),
                None => format!("was killed by signal {signal}"),
            },
            Status::WallTimeout => format!(
                "ran out of time (limit {}) and was stopped",
                describe_duration(limits.wall)
            ),
            Status::MemoryLimit => format!(
                "ran out of memory (limit {}) and was stopped",
                describe_bytes(limits.memory_bytes)
            ),
            Status::PidsLimit => format!(
                "started too many processes or threads (limit {}) and was stopped",
                limits.pids
            ),
            Status::OutputLimit => format!(
                "printed too much output (limit {}) and was stopped",
                describe_bytes(limits.stdout_bytes)
            ),
            Status::DiskLimit => format!(
                "filled its work folder (limit {} or {} files) and was stopped",
                describe_bytes(limits.work_bytes),
                limits.work_inodes
            ),
            Status::Stopped => "was stopped early (too many events)".to_string(),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL: illegal instruction",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT: aborted",
        libc::SIGBUS => "SIGBUS: bus error",
        libc::SIGFPE => "SIGFPE: arithmetic error",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV: segmentation fault",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU: CPU time limit exceeded",
        libc::SIGXFSZ => "SIGXFSZ: file size limit exceeded",
        libc::SIGSYS => "SIGSYS: forbidden system call",
        _ => return None,
    })
}

/// "256 MiB", "4096 MiB", "512 KiB", "100 bytes".
pub(crate) fn describe_bytes(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

fn describe_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs >= 60 && secs.is_multiple_of(60) {
        let m = secs / 60;
        format!("{m} minute{}", if m == 1 { "" } else { "s" })
    } else {
        format!("{secs} s")
    }
}

/// What `run` reports about a finished job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    /// Bytes the job wrote to stdout (up to the point it was stopped).
    pub stdout_bytes: u64,
    /// The last `Limits::stderr_bytes` of stderr, lossily decoded.
    pub stderr_tail: String,
    pub wall: Duration,
    /// CPU time (user + system) of the job's processes, where measurable.
    pub cpu: Option<Duration>,
    /// Peak memory of the job, where measurable.
    pub peak_memory_bytes: Option<u64>,
    /// Which mechanisms were in force: "namespaces", "seccomp",
    /// "cgroup-memory", "cgroup-pids", "tmpfs-work", "watchdog-disk",
    /// "rlimits", "rlimit-nproc", "watchdog-wall", "output-caps".
    pub enforced: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_the_documented_ones() {
        let l = Limits::default();
        assert_eq!(l.wall, Duration::from_secs(600));
        assert_eq!(l.memory_bytes, 4 << 30);
        assert_eq!(l.pids, 256);
        assert_eq!(l.file_size_bytes, 1 << 30);
        assert_eq!(l.open_files, 256);
        assert_eq!(l.work_bytes, 2 << 30);
        assert_eq!(l.work_inodes, 10_000);
        assert_eq!(l.tmp_bytes, 256 << 20);
        assert_eq!(l.stdout_bytes, 16 << 20);
        assert_eq!(l.stderr_bytes, 1 << 20);
        assert_eq!(l.max_line_bytes, 64 << 10);
    }

    #[test]
    fn describe_gives_students_the_limit() {
        let l = Limits::default();
        assert_eq!(
            Status::MemoryLimit.describe(&l),
            "ran out of memory (limit 4096 MiB) and was stopped"
        );
        assert_eq!(
            Status::WallTimeout.describe(&l),
            "ran out of time (limit 10 minutes) and was stopped"
        );
        assert!(Status::PidsLimit.describe(&l).contains("limit 256"));
        assert!(Status::OutputLimit.describe(&l).contains("16 MiB"));
        assert!(Status::DiskLimit.describe(&l).contains("2048 MiB"));
        assert!(Status::DiskLimit.describe(&l).contains("10000 files"));
        assert_eq!(
            Status::Exited { code: 3 }.describe(&l),
            "exited with code 3"
        );
        assert!(Status::Signalled { signal: 11 }
            .describe(&l)
            .contains("segmentation fault"));
        let short = Limits {
            wall: Duration::from_millis(2500),
            memory_bytes: 256 << 20,
            ..Limits::default()
        };
        assert!(Status::WallTimeout.describe(&short).contains("2.5 s"));
        assert!(Status::MemoryLimit.describe(&short).contains("256 MiB"));
    }

    #[test]
    fn only_exit_zero_is_success() {
        assert!(Status::Exited { code: 0 }.success());
        for s in [
            Status::Exited { code: 1 },
            Status::Signalled { signal: 9 },
            Status::WallTimeout,
            Status::MemoryLimit,
            Status::PidsLimit,
            Status::OutputLimit,
            Status::DiskLimit,
            Status::Stopped,
        ] {
            assert!(!s.success(), "{s:?}");
        }
    }

    #[test]
    fn status_serializes_with_a_tag() -> Result<(), serde_json::Error> {
        let json = serde_json::to_string(&Status::Exited { code: 2 })?;
        assert_eq!(json, r#"{"status":"exited","code":2}"#);
        let back: Status = serde_json::from_str(r#"{"status":"memory_limit"}"#)?;
        assert_eq!(back, Status::MemoryLimit);
        let limits: Limits = serde_json::from_str(&serde_json::to_string(&Limits::default())?)?;
        assert_eq!(limits, Limits::default());
        Ok(())
    }
}
