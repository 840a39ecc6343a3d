//! Running one claimed job on this host: train in the sandbox, then grade
//! outside it.
//!
//! A recipe job runs `sanhak lab train` (the trusted training program) in
//! bubblewrap with the lab's public files read-only, the recipe in `/work`,
//! no network and the job's limits. Its stdout (JSON-lines events) is
//! forwarded as it arrives; it is display-only and never changes the grade.
//! The checkpoint is read back without following links, with a size cap, and
//! the trusted grader scores it on the hidden split, which never entered the
//! sandbox.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sanhak_sandbox::{self as sandbox, Bind, Limits, LineAction, SandboxSpec, Status, WorkDir};

use super::cache::LabDirs;
use super::gpu::GpuAssignment;
use crate::codelab::compile::{compile_submission, default_compile_limits, Prebuilt};
use crate::codelab::sandboxed::Isolation;
use crate::codelab::{self, finetune, CodeOutcome, GradeOptions, GradeProgress};
use crate::grade::{self, GradeOutcome};
use crate::lab::Lab;
use crate::protocol::{self, Fault, JobEvent, JobSpec, Outcome, Phase, SubmissionKind, Usage};
use crate::train::device::DEVICE_UNAVAILABLE_EXIT;
use crate::train::events::Event;

/// Where the trainer binary, the lab and the shared models appear in a sandbox.
pub const GUEST_TRAINER: &str = "/opt/sanhak/sanhak";
/// Labs appear as `/opt/labs/<id>` (a lab folder is named after its id).
pub const GUEST_LABS: &str = "/opt/labs";
pub const GUEST_DATA: &str = "/opt/data";
/// The checkpoint a recipe run writes, relative to `/work`.
pub const CHECKPOINT: &str = "out/model.safetensors";
/// Largest checkpoint read back (the biggest shipped model is ~90 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 512 * 1024 * 1024;
/// Stdout lines forwarded per job; past this the job is stopped.
pub const MAX_EVENT_LINES: u64 = 50_000;

/// How this host runs jobs.
#[derive(Debug, Clone)]
pub struct Executor {
    /// The `sanhak` binary run inside the sandbox as the trainer.
    pub trainer: PathBuf,
    /// Shared pretrained models (`<data_dir>/models`), bound read-only when present.
    pub models_dir: Option<PathBuf>,
    /// Parent of the per-job work folders.
    pub work_root: PathBuf,
    /// Where code labs' prebuilt rlibs of labkit and candle are cached
    /// (built once per host, toolchain and version).
    pub rlib_cache: PathBuf,
    /// Host folders of the CUDA driver and libraries, bound read-only into
    /// every training sandbox and put on its `LD_LIBRARY_PATH` (a `cuda`
    /// build of the trainer links them, even for a CPU job). Empty for a
    /// build without CUDA.
    pub library_dirs: Vec<PathBuf>,
    prebuilt: Arc<OnceLock<Result<Prebuilt, String>>>,
}

/// How a job ended on this host.
#[derive(Debug, Clone)]
pub enum JobEnd {
    /// Graded (or refused by the grader): report with `complete`.
    Complete(Box<protocol::Complete>),
    /// Report with `fail`.
    Fail(protocol::Fail),
    /// Cancelled by the app: report nothing.
    Cancelled,
}

impl JobEnd {
    fn fail(fault: Fault, message: impl Into<String>, usage: Usage) -> JobEnd {
        JobEnd::Fail(protocol::Fail {
            lease: String::new(),
            fault,
            message: message.into(),
            usage,
        })
    }
}

/// Callbacks into the worker while a job runs.
pub struct JobControl<'a> {
    /// Each event, in order, as it arrives.
    pub on_event: &'a mut (dyn FnMut(JobEvent) + Send),
    /// Phase changes (the worker reports them with its heartbeat).
    pub on_phase: &'a mut (dyn FnMut(Phase) + Send),
    /// Set by the worker when the app cancels the job or the lease is lost;
    /// the sandbox is killed within a watchdog tick.
    pub stop: &'a Arc<AtomicBool>,
    /// The GPUs reserved for the job (none for a CPU job) and its entry in
    /// the GPU memory watchdog, which sets `stop` when the job exceeds its
    /// declared GPU memory.
    pub gpu: &'a GpuAssignment,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The sandbox limits of a job.
pub fn limits_for(job: &JobSpec) -> Limits {
    let r = &job.resources;
    Limits {
        wall: Duration::from_secs(r.wall_seconds.max(1)),
        memory_bytes: r.memory_mb.max(64) * 1024 * 1024,
        work_bytes: 2 * 1024 * 1024 * 1024,
        file_size_bytes: MAX_CHECKPOINT_BYTES,
        ..Limits::default()
    }
}

impl Executor {
    pub fn new(
        trainer: PathBuf,
        models_dir: Option<PathBuf>,
        work_root: PathBuf,
        rlib_cache: PathBuf,
    ) -> Executor {
        Executor {
            trainer,
            models_dir,
            work_root,
            rlib_cache,
            library_dirs: Vec::new(),
            prebuilt: Arc::new(OnceLock::new()),
        }
    }

    /// The prebuilt rlibs code labs compile against, built on first use
    /// (minutes, once per host and toolchain) and cached on disk.
    pub fn prebuilt(&self) -> Result<&Prebuilt, String> {
        self.prebuilt
            .get_or_init(|| Prebuilt::prepare(&self.rlib_cache).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Removes the work folders a previous run of this runner left behind
    /// (a killed worker cannot unmount its jobs' folders). Call once at start;
    /// each runner needs a work root of its own.
    pub fn clean_work_root(&self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.work_root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for entry in entries {
            let path = entry?.path();
            WorkDir::remove_stale(&path)?;
            n += 1;
        }
        Ok(n)
    }

    /// Runs a job to its end. Blocking: call from `spawn_blocking`.
    pub fn run(&self, job: &JobSpec, dirs: &LabDirs, ctl: &mut JobControl<'_>) -> JobEnd {
        match job.kind {
            SubmissionKind::Recipe => self.run_recipe(job, dirs, ctl),
            SubmissionKind::Code => self.run_code(job, dirs, ctl),
        }
    }

    fn run_recipe(&self, job: &JobSpec, dirs: &LabDirs, ctl: &mut JobControl<'_>) -> JobEnd {
        let t0 = Instant::now();
        let infra = |what: &str, e: &dyn std::fmt::Display| {
            JobEnd::fail(
                Fault::Infrastructure,
                format!("{what}: {e}"),
                Usage {
                    wall_seconds: t0.elapsed().as_secs_f64(),
                    ..Usage::default()
                },
            )
        };
        if let Err(e) = std::fs::create_dir_all(&self.work_root) {
            return infra("creating the work root", &e);
        }
        let limits = limits_for(job);
        let folder = self
            .work_root
            .join(format!("{}-{}", job.job_id, job.attempt));
        let work = match WorkDir::create(&folder, &limits) {
            Ok(w) => w,
            Err(e) => return infra("creating the work folder", &e),
        };
        if let Err(e) = std::fs::write(work.path().join("recipe.toml"), &job.content) {
            return infra("writing the recipe", &e);
        }
        let guest_lab = format!("{GUEST_LABS}/{}", job.lab.id);
        let mut command: Vec<OsString> = [
            GUEST_TRAINER,
            "lab",
            "train",
            &guest_lab,
            "--recipe",
            "/work/recipe.toml",
            "--out",
            "/work/out",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        if job.step_scale < 1.0 {
            command.push("--step-scale".into());
            command.push(job.step_scale.to_string().into());
        }
        let mut spec = SandboxSpec::new(command, work.path());
        spec.limits = limits;
        spec.cancel = Some(ctl.stop.clone());
        spec.ro_binds.push(Bind::new(&self.trainer, GUEST_TRAINER));
        spec.ro_binds.push(Bind::new(&dirs.public, &guest_lab));
        spec.env.push(("SANHAK_DATA_DIR".into(), GUEST_DATA.into()));
        spec.env.push(("SANHAK_LOG".into(), "warn".into()));
        if let Some(models) = self.models_dir.as_ref().filter(|m| m.is_dir()) {
            spec.ro_binds
                .push(Bind::new(models, Path::new(GUEST_DATA).join("models")));
        }
        spec.add_library_dirs(&self.library_dirs);
        ctl.gpu.apply(&mut spec);
        let gpus_assigned = ctl.gpu.gpus.len() as f64;
        (ctl.on_phase)(Phase::Running);
        let mut seq = 0u64;
        let mut flooded = false;
        let stop = &**ctl.stop;
        let on_event = &mut *ctl.on_event;
        let result = sandbox::run(&spec, &mut |line: &str| {
            if stop.load(Ordering::Relaxed) {
                return LineAction::Stop;
            }
            if seq >= MAX_EVENT_LINES {
                flooded = true;
                return LineAction::Stop;
            }
            let (kind, data) = match Event::from_json_line(line) {
                Ok(e) => (
                    "event",
                    serde_json::to_value(&e).unwrap_or(serde_json::Value::Null),
                ),
                Err(_) => ("log", serde_json::Value::String(line.to_owned())),
            };
            on_event(JobEvent {
                seq,
                at_ms: now_ms(),
                kind: kind.into(),
                data,
            });
            seq += 1;
            LineAction::Continue
        });
        let outcome = match result {
            Ok(o) => o,
            Err(e @ sandbox::SandboxError::BwrapMissing) => {
                return infra("this runner cannot sandbox jobs", &e)
            }
            Err(e) => return infra("starting the sandbox", &e),
        };
        let usage = Usage {
            wall_seconds: outcome.wall.as_secs_f64(),
            cpu_seconds: outcome
                .cpu
                .map(|d| d.as_secs_f64())
                .unwrap_or_else(|| outcome.wall.as_secs_f64()),
            gpu_seconds: outcome.wall.as_secs_f64() * gpus_assigned,
        };
        if let Some(message) = ctl.gpu.overuse() {
            return JobEnd::fail(Fault::Submission, message, usage);
        }
        if stop.load(Ordering::Relaxed) {
            return JobEnd::Cancelled;
        }
        if flooded {
            return JobEnd::fail(
                Fault::Submission,
                format!("the run printed more than {MAX_EVENT_LINES} lines and was stopped"),
                usage,
            );
        }
        if !outcome.status.success() {
            let last = outcome
                .stderr_tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            // The trainer is trusted code: this status means it could not
            // open the device this runner assigned (see `train::device`).
            if outcome.status
                == (Status::Exited {
                    code: DEVICE_UNAVAILABLE_EXIT,
                })
            {
                return JobEnd::fail(
                    Fault::Infrastructure,
                    format!("the runner's training device is unavailable: {last}"),
                    usage,
                );
            }
            let mut message = format!("training {}", outcome.status.describe(&spec.limits));
            if !last.is_empty() {
                message.push_str(": ");
                message.push_str(last);
            }
            return JobEnd::fail(Fault::Submission, message, usage);
        }
        let bytes = match sandbox::read_output(work.path(), CHECKPOINT, MAX_CHECKPOINT_BYTES) {
            Ok(b) => b,
            Err(e) => {
                return JobEnd::fail(
                    Fault::Submission,
                    format!("no usable checkpoint: {e}"),
                    usage,
                )
            }
        };
        drop(work);
        (ctl.on_phase)(Phase::Grading);
        self.grade(job, dirs, &bytes, usage)
    }

    /// A code lab: compile the student's `src/lib.rs` in a sandbox with no
    /// network, then run the hidden numerical tests and the fine-tuning run
    /// with the compiled program in the training sandbox; the trusted grader
    /// scores the fine-tuned checkpoint on the hidden split outside it.
    fn run_code(&self, job: &JobSpec, dirs: &LabDirs, ctl: &mut JobControl<'_>) -> JobEnd {
        let t0 = Instant::now();
        // Code labs train on the CPU for now; GPUs reserved for one are
        // still charged, as wall time × GPUs assigned.
        let gpus_assigned = ctl.gpu.gpus.len() as f64;
        let usage = |t0: Instant| Usage {
            wall_seconds: t0.elapsed().as_secs_f64(),
            cpu_seconds: t0.elapsed().as_secs_f64(),
            gpu_seconds: t0.elapsed().as_secs_f64() * gpus_assigned,
        };
        let infra = |what: &str, e: &dyn std::fmt::Display| {
            JobEnd::fail(Fault::Infrastructure, format!("{what}: {e}"), usage(t0))
        };
        let isolation = match Isolation::student() {
            Ok(i) => i,
            Err(e) => return infra("this runner cannot run code labs", &e),
        };
        let lab = match Lab::load(&dirs.full) {
            Ok(l) => l,
            Err(e) => return infra("loading the lab", &e),
        };
        let prebuilt = match self.prebuilt() {
            Ok(p) => p,
            Err(e) => return infra("preparing the code-lab toolchain", &e),
        };
        let folder = self
            .work_root
            .join(format!("{}-{}", job.job_id, job.attempt));
        if let Err(e) = WorkDir::remove_stale(&folder) {
            return infra("clearing the work folder", &e);
        }
        // Removes the folder however the job ends.
        struct Cleanup<'a>(&'a Path);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = WorkDir::remove_stale(self.0);
            }
        }
        let _cleanup = Cleanup(&folder);
        (ctl.on_phase)(Phase::Running);
        let mut seq = 0u64;
        let mut emit = |kind: &str, data: serde_json::Value| {
            (ctl.on_event)(JobEvent {
                seq,
                at_ms: now_ms(),
                kind: kind.into(),
                data,
            });
            seq += 1;
        };
        emit("log", "compiling src/lib.rs".into());
        let compiled = match compile_submission(
            prebuilt,
            &lab,
            &job.content,
            &folder.join("build"),
            &default_compile_limits(),
        ) {
            Ok(c) => c,
            Err(e) => return infra("compiling", &e),
        };
        emit(
            "compile",
            serde_json::json!({
                "ok": compiled.binary().is_some(),
                "diagnostics": compiled.diagnostics,
                "wall_s": compiled.wall_s,
            }),
        );
        if let Some(failure) = compiled.failure() {
            let mut message = format!("src/lib.rs does not compile: {failure}");
            if !compiled.rendered.is_empty() {
                message.push('\n');
                message.extend(compiled.rendered.chars().take(8_000));
            }
            return JobEnd::fail(Fault::Submission, message, usage(t0));
        }
        let Some(binary) = compiled.binary().map(Path::to_path_buf) else {
            return infra("compiling", &"no binary and no error");
        };
        let data = match finetune::prepare_data(&lab, &folder.join("data")) {
            Ok(d) => d,
            Err(e) => return infra("preparing the training data", &e),
        };
        let opts = GradeOptions {
            step_scale: job.step_scale,
            work_dir: folder.join("grade"),
        };
        let stop = ctl.stop;
        let outcome =
            codelab::grade_submission_isolated(&lab, &binary, &data, &opts, &isolation, &mut |p| {
                match p {
                    GradeProgress::Phase(name) => emit("log", format!("phase: {name}").into()),
                    GradeProgress::Event(e) => {
                        if !stop.load(Ordering::Relaxed) {
                            emit(
                                "event",
                                serde_json::to_value(e).unwrap_or(serde_json::Value::Null),
                            );
                        }
                    }
                }
            });
        if stop.load(Ordering::Relaxed) {
            return JobEnd::Cancelled;
        }
        (ctl.on_phase)(Phase::Grading);
        let usage = usage(t0);
        let complete = match outcome {
            CodeOutcome::Graded(g) => {
                let (metric, public_metric) = match &g.fine_tune.outcome {
                    GradeOutcome::Graded(r) => (Some(r.metric), Some(r.public.metric)),
                    _ => (None, None),
                };
                protocol::Complete {
                    lease: String::new(),
                    outcome: Outcome::Graded,
                    points: Some(g.points),
                    max_points: g.max_points,
                    metric,
                    public_metric,
                    message: g.feedback.join("\n"),
                    report: serde_json::to_value(&g).unwrap_or(serde_json::Value::Null),
                    artifacts: Vec::new(),
                    usage,
                }
            }
            CodeOutcome::NotGradable { reason } => protocol::Complete {
                lease: String::new(),
                outcome: Outcome::NotGradable,
                points: None,
                max_points: lab.manifest.grading.points,
                metric: None,
                public_metric: None,
                message: reason,
                report: serde_json::Value::Null,
                artifacts: Vec::new(),
                usage,
            },
        };
        JobEnd::Complete(Box::new(complete))
    }

    /// Grades checkpoint bytes with the trusted grader on the full package.
    fn grade(&self, job: &JobSpec, dirs: &LabDirs, checkpoint: &[u8], usage: Usage) -> JobEnd {
        let infra = |what: &str, e: &dyn std::fmt::Display| {
            JobEnd::fail(Fault::Infrastructure, format!("{what}: {e}"), usage)
        };
        let lab = match Lab::load(&dirs.full) {
            Ok(l) => match &self.models_dir {
                Some(m) => l.with_models_dir(m),
                None => l,
            },
            Err(e) => return infra("loading the lab for grading", &e),
        };
        let scratch = match tempfile::Builder::new()
            .prefix(&format!("grade-{}-", job.job_id))
            .tempdir_in(&self.work_root)
        {
            Ok(d) => d,
            Err(e) => return infra("creating the grading folder", &e),
        };
        let path = scratch.path().join("model.safetensors");
        if let Err(e) = std::fs::write(&path, checkpoint) {
            return infra("writing the checkpoint for grading", &e);
        }
        let artifacts = vec![protocol::Artifact {
            name: "model.safetensors".into(),
            sha256: protocol::sha256_hex(checkpoint),
            bytes: checkpoint.len() as u64,
        }];
        let outcome = grade::grade_checkpoint(&lab, &path, None);
        let max_points = lab.manifest.grading.points;
        let complete = match outcome {
            GradeOutcome::Graded(report) => protocol::Complete {
                lease: String::new(),
                outcome: Outcome::Graded,
                points: Some(report.points),
                max_points: report.max_points,
                metric: Some(report.metric),
                public_metric: Some(report.public.metric),
                message: format!(
                    "{} {:.4} on the public part of the hidden set: {:.1}/{} points",
                    report.metric_name, report.public.metric, report.points, report.max_points
                ),
                report: serde_json::to_value(&report).unwrap_or(serde_json::Value::Null),
                artifacts,
                usage,
            },
            GradeOutcome::Rejected { reason } => protocol::Complete {
                lease: String::new(),
                outcome: Outcome::Rejected,
                points: Some(0.0),
                max_points,
                metric: None,
                public_metric: None,
                message: reason,
                report: serde_json::Value::Null,
                artifacts,
                usage,
            },
            GradeOutcome::NotGradable { reason } => protocol::Complete {
                lease: String::new(),
                outcome: Outcome::NotGradable,
                points: None,
                max_points,
                metric: None,
                public_metric: None,
                message: reason,
                report: serde_json::Value::Null,
                artifacts,
                usage,
            },
        };
        JobEnd::Complete(Box::new(complete))
    }
}
