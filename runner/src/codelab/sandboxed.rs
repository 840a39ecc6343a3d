//! Running a submission binary: in the sandbox for student code, as a plain
//! child process ([`super::process::run_with_limit`]) only for the lab
//! author's own code on their machine (`sanhak lab check` without bwrap).
//!
//! In the sandbox the program sees its binary (read-only, at
//! [`GUEST_BINARY`]), its inputs (read-only, at [`GUEST_INPUT`]: files the
//! trusted grader prepared from the lab's public data and base model, never
//! `hidden/`), `/usr`, and a fresh `/work` for its outputs. The grader reads
//! the declared outputs back with [`sanhak_sandbox::read_output`] (regular
//! files only, no symlinks, size caps) into the host output folder, and then
//! validates them as before.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sanhak_sandbox::{Bind, Limits, LineAction, OutputError, SandboxSpec, Status};

use super::process::{
    run_with_limit, ExitKind, ProcessOutcome, MAX_EVENTS, MAX_LINE_BYTES, STDERR_TAIL_BYTES,
};
use super::CodeLabError;
use crate::train::events::Event;

/// Where the submission binary is mounted in the sandbox.
pub const GUEST_BINARY: &str = "/opt/sanhak/bin/submission";
/// Where the program's inputs are mounted in the sandbox.
pub const GUEST_INPUT: &str = "/input";
/// The program's work folder (and output folder) in the sandbox.
pub const GUEST_WORK: &str = sanhak_sandbox::GUEST_WORK;
/// Folder name of the sandbox's work folder inside the host output folder
/// (removed after the run).
const SANDBOX_WORK: &str = ".sandbox-work";

/// Extra settings of the training sandbox (GPUs).
#[derive(Debug, Clone, Default)]
pub struct SandboxSettings {
    /// Device nodes bound into the sandbox (`/dev/nvidia0`, `/dev/nvidiactl`, …).
    pub dev_binds: Vec<PathBuf>,
    /// Further read-only binds (GPU driver libraries).
    pub ro_binds: Vec<Bind>,
}

/// How a submission binary runs.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// A child process with a wall-clock limit and an empty environment.
    /// Only for code the lab's author wrote, on their own machine.
    Trusted,
    /// bubblewrap: namespaces, seccomp, rlimits, cgroups, no network.
    Sandboxed(SandboxSettings),
}

impl Isolation {
    /// For student code: the sandbox, or an error that names the package
    /// to install when bwrap is missing. Student code never runs unsandboxed.
    pub fn student() -> Result<Isolation, CodeLabError> {
        if sanhak_sandbox::bwrap_path().is_none() {
            return Err(CodeLabError::Sandbox(
                sanhak_sandbox::SandboxError::BwrapMissing.to_string(),
            ));
        }
        Ok(Isolation::Sandboxed(SandboxSettings::default()))
    }

    /// For the lab author's reference code (`lab check`): the sandbox when
    /// bwrap is installed, else a plain child process.
    pub fn for_lab_check() -> Isolation {
        match Isolation::student() {
            Ok(i) => i,
            Err(_) => {
                tracing::warn!(
                    "bwrap is not installed: lab check runs the lab's own binaries without a sandbox (install `{}`)",
                    sanhak_sandbox::BWRAP_PACKAGE
                );
                Isolation::Trusted
            }
        }
    }
}

/// One run of a submission binary.
pub(crate) struct Job<'a> {
    pub binary: &'a Path,
    /// Host folder with the program's inputs (read-only in the sandbox).
    pub input_dir: &'a Path,
    /// Host folder where the program's outputs end up.
    pub output_dir: &'a Path,
    /// Files the program writes into its output folder, with size caps.
    pub outputs: &'a [(&'a str, u64)],
    pub limit: Duration,
    pub threads: u32,
    pub memory_bytes: u64,
}

/// The outcome of a job, plus outputs refused on the way back.
pub(crate) struct JobOutcome {
    pub process: ProcessOutcome,
    /// Output file → why it was not copied back (too large, a symlink, …).
    pub refused: BTreeMap<String, String>,
}

/// Run `job`; `args(input, output)` gives the arguments, with the two
/// folders as the program sees them. `Err` only when the program could not
/// be started (the grader's problem).
pub(crate) fn run_job(
    isolation: &Isolation,
    job: &Job<'_>,
    args: &dyn Fn(&Path, &Path) -> Vec<String>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<JobOutcome, CodeLabError> {
    std::fs::create_dir_all(job.output_dir).map_err(|e| CodeLabError::io(job.output_dir, e))?;
    for (name, _) in job.outputs {
        let _ = std::fs::remove_file(job.output_dir.join(name));
    }
    let settings = match isolation {
        Isolation::Trusted => {
            let process = run_with_limit(
                job.binary,
                &args(job.input_dir, job.output_dir),
                job.limit,
                job.threads,
                on_event,
            )
            .map_err(|e| CodeLabError::Spawn {
                binary: job.binary.to_path_buf(),
                message: e.to_string(),
            })?;
            return Ok(JobOutcome {
                process,
                refused: BTreeMap::new(),
            });
        }
        Isolation::Sandboxed(s) => s,
    };
    if !job.binary.is_file() {
        return Err(CodeLabError::Spawn {
            binary: job.binary.to_path_buf(),
            message: "no such file".into(),
        });
    }
    let largest = job.outputs.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let total: u64 = job.outputs.iter().map(|(_, n)| *n).sum();
    let limits = Limits {
        wall: job.limit,
        cpu_seconds: None,
        memory_bytes: job.memory_bytes,
        // The program's threads (rayon) plus a margin.
        pids: 32 + u64::from(job.threads),
        file_size_bytes: largest + (1 << 20),
        open_files: 256,
        work_bytes: total + (64 << 20),
        work_inodes: 1000,
        tmp_bytes: 64 << 20,
        stdout_bytes: 64 << 20,
        stderr_bytes: STDERR_TAIL_BYTES as u64,
        max_line_bytes: MAX_LINE_BYTES as usize,
    };
    let work_path = job.output_dir.join(SANDBOX_WORK);
    if work_path.exists() {
        let _ = std::fs::remove_dir_all(&work_path);
    }
    let work = sanhak_sandbox::WorkDir::create(&work_path, &limits)
        .map_err(|e| CodeLabError::io(&work_path, e))?;
    let mut command: Vec<OsString> = vec![GUEST_BINARY.into()];
    command.extend(
        args(Path::new(GUEST_INPUT), Path::new(GUEST_WORK))
            .into_iter()
            .map(OsString::from),
    );
    let mut spec = SandboxSpec::new(command, work.path());
    spec.ro_binds = vec![
        Bind::new(job.binary, GUEST_BINARY),
        Bind::new(job.input_dir, GUEST_INPUT),
    ];
    spec.ro_binds.extend(settings.ro_binds.iter().cloned());
    spec.dev_binds = settings.dev_binds.clone();
    spec.env = vec![(
        "RAYON_NUM_THREADS".to_string(),
        job.threads.max(1).to_string(),
    )];
    spec.limits = limits.clone();

    let mut events = Vec::new();
    let mut other_lines = 0usize;
    let outcome = sanhak_sandbox::run(&spec, &mut |line: &str| {
        if events.len() + other_lines >= MAX_EVENTS {
            return LineAction::Continue;
        }
        match Event::from_json_line(line) {
            Ok(e) => {
                on_event(&e);
                events.push(e);
            }
            Err(_) => other_lines += 1,
        }
        LineAction::Continue
    })
    .map_err(|e| CodeLabError::Spawn {
        binary: job.binary.to_path_buf(),
        message: e.to_string(),
    })?;

    let mut refused = BTreeMap::new();
    if outcome.status.success() {
        for (name, cap) in job.outputs {
            match sanhak_sandbox::read_output(work.path(), name, *cap) {
                Ok(bytes) => {
                    let to = job.output_dir.join(name);
                    std::fs::write(&to, bytes).map_err(|e| CodeLabError::io(&to, e))?;
                }
                Err(OutputError::Missing) => {}
                Err(e) => {
                    refused.insert(name.to_string(), e.to_string());
                }
            }
        }
    }
    drop(work);
    let exit = match &outcome.status {
        Status::Exited { code: 0 } => ExitKind::Success,
        Status::Exited { code } => ExitKind::Failed { code: *code },
        Status::Signalled { signal } => ExitKind::Crashed {
            signal: Some(*signal),
        },
        Status::WallTimeout => ExitKind::TimedOut {
            limit_s: job.limit.as_secs(),
        },
        other => ExitKind::Stopped {
            reason: other.describe(&limits),
        },
    };
    Ok(JobOutcome {
        process: ProcessOutcome {
            exit,
            events,
            other_lines,
            stderr_tail: outcome.stderr_tail,
            wall_s: outcome.wall.as_secs_f64(),
            peak_rss_mib: outcome
                .peak_memory_bytes
                .map(|b| b as f64 / (1024.0 * 1024.0)),
        },
        refused,
    })
}
