//! Code labs: students write Rust against [`labkit`], the runner grades it.
//!
//! A code lab's submission is a crate whose binary hands control to a labkit
//! harness (`labkit::harness::main`). The grader talks to that binary only
//! through its process protocol (subcommands, files, exit status), so the
//! same code grades a binary compiled normally (`sanhak lab check`, tests)
//! and one compiled and run in the sandbox (the runner service).
//!
//! A grade has two parts:
//! - [`numerics`]: hidden numerical tests on inputs the grader draws from a
//!   secret seed, compared with the runner's own reference implementation;
//! - [`finetune`]: a fine-tuning run with the submission's layer under a
//!   rank budget, scored on the hidden split by the lab's `[grading]` rubric.
//!
//! Trust: nothing the binary prints is believed. Its output files are size
//! capped and validated (names, shapes, dtypes, NaN). A crash, a non-zero
//! exit or a timeout is the submission's failure, with a clear message;
//! only failures of the grader itself (cannot write its files, cannot start
//! the program, missing hidden data) make a result *not gradable*.

pub mod check;
pub mod compile;
pub mod finetune;
pub mod numerics;
pub mod process;
pub mod sandboxed;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::grade::GradeOutcome;
use crate::lab::{Lab, LabError, LabKind};
use crate::programs::ProgramError;
use crate::train::events::Event;

pub use finetune::{FineTuneReport, PreparedData};
pub use numerics::{NumericsReport, TestResult};
pub use sandboxed::{Isolation, SandboxSettings};
pub use spec::CodeSpec;

/// Failures of the grader or of the lab package (never the student's fault).
#[derive(Debug, thiserror::Error)]
pub enum CodeLabError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {message}")]
    Spawn { binary: PathBuf, message: String },
    #[error("building {krate} failed: {message}")]
    Build { krate: PathBuf, message: String },
    /// The sandbox is unavailable (bwrap missing) or could not be set up.
    #[error("{0}")]
    Sandbox(String),
    #[error("{0}")]
    Other(String),
}

impl CodeLabError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CodeLabError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The `[code]` table of a code lab.
pub fn code_spec(lab: &Lab) -> Result<&CodeSpec, CodeLabError> {
    match (&lab.manifest.code, lab.manifest.kind) {
        (Some(c), LabKind::Code) => Ok(c),
        _ => Err(LabError::invalid(
            &lab.manifest_path(),
            "kind",
            "a code lab with a [code] table",
        )
        .into()),
    }
}

/// A graded code submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeGrade {
    pub lab_id: String,
    pub lab_version: String,
    pub numerics: NumericsReport,
    pub fine_tune: FineTuneReport,
    /// Numerical tests plus fine-tuning.
    pub points: f64,
    pub max_points: f64,
    /// One line per test and one for the fine-tuning run.
    pub feedback: Vec<String>,
}

/// The result of grading a code submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CodeOutcome {
    Graded(Box<CodeGrade>),
    /// The grader could not grade (infrastructure): not a zero.
    NotGradable {
        reason: String,
    },
}

impl CodeOutcome {
    pub fn points(&self) -> Option<f64> {
        match self {
            CodeOutcome::Graded(g) => Some(g.points),
            CodeOutcome::NotGradable { .. } => None,
        }
    }

    pub fn grade(&self) -> Option<&CodeGrade> {
        match self {
            CodeOutcome::Graded(g) => Some(g),
            CodeOutcome::NotGradable { .. } => None,
        }
    }
}

/// Where a grading run works and how long it trains.
#[derive(Debug, Clone)]
pub struct GradeOptions {
    /// Scales the submission's step count (quick checks); 1 for real grades.
    pub step_scale: f64,
    /// Folder for the inputs and outputs of this submission.
    pub work_dir: PathBuf,
}

/// What a grading run reports while it works.
pub enum GradeProgress<'a> {
    Phase(&'a str),
    Event(&'a Event),
}

fn fine_tune_line(lab: &Lab, r: &FineTuneReport) -> String {
    let g = &lab.manifest.grading;
    let rank = r
        .rank
        .map(|k| format!("rank {k} of {}", r.rank_budget))
        .unwrap_or_else(|| format!("rank budget {}", r.rank_budget));
    match &r.outcome {
        GradeOutcome::Graded(rep) => format!(
            "fine-tuning ({rank}): hidden {} {:.4} (target {}) → {:.1}/{} points",
            rep.metric_name, rep.metric, g.target, rep.points, rep.max_points
        ),
        GradeOutcome::Rejected { reason } => {
            format!("fine-tuning ({rank}): 0/{} points: {reason}", g.points)
        }
        GradeOutcome::NotGradable { reason } => format!("fine-tuning: not gradable: {reason}"),
    }
}

/// Grade one submission binary as a plain child process: the hidden
/// numerical tests, then the fine-tuning run on `data` (from
/// [`finetune::prepare_data`]). Only for the lab author's own binaries;
/// student binaries go through [`grade_submission_isolated`] with
/// [`Isolation::student`].
pub fn grade_submission(
    lab: &Lab,
    binary: &Path,
    data: &PreparedData,
    opts: &GradeOptions,
    progress: &mut dyn FnMut(GradeProgress<'_>),
) -> CodeOutcome {
    grade_submission_isolated(lab, binary, data, opts, &Isolation::Trusted, progress)
}

/// [`grade_submission`] with the binary run under `isolation` (the sandbox,
/// for student code).
pub fn grade_submission_isolated(
    lab: &Lab,
    binary: &Path,
    data: &PreparedData,
    opts: &GradeOptions,
    isolation: &Isolation,
    progress: &mut dyn FnMut(GradeProgress<'_>),
) -> CodeOutcome {
    let mut run = || -> Result<CodeOutcome, CodeLabError> {
        let spec = code_spec(lab)?;
        progress(GradeProgress::Phase("numerical tests"));
        let numerics = numerics::run_numerics_isolated(
            &spec.numerics,
            binary,
            &opts.work_dir.join("numerics"),
            lab.manifest.limits.threads,
            lab.manifest.limits.memory_mb.max(1) << 20,
            isolation,
            &mut |e| progress(GradeProgress::Event(e)),
        )?;
        progress(GradeProgress::Phase("fine-tuning"));
        let fine_tune = finetune::run_fine_tune_isolated(
            lab,
            &spec.fine_tune,
            binary,
            data,
            &opts.work_dir.join("fine-tune"),
            opts.step_scale,
            isolation,
            &mut |e| progress(GradeProgress::Event(e)),
        )?;
        if let GradeOutcome::NotGradable { reason } = &fine_tune.outcome {
            return Ok(CodeOutcome::NotGradable {
                reason: reason.clone(),
            });
        }
        let ft_points = fine_tune.outcome.points().unwrap_or(0.0);
        let mut feedback: Vec<String> = numerics
            .tests
            .iter()
            .map(|t| format!("{:.1}/{} {}", t.points, t.max_points, t.message))
            .collect();
        feedback.push(fine_tune_line(lab, &fine_tune));
        if let GradeOutcome::Graded(r) = &fine_tune.outcome {
            feedback.extend(r.feedback.hints.iter().map(|h| format!("hint: {h}")));
        }
        Ok(CodeOutcome::Graded(Box::new(CodeGrade {
            lab_id: lab.id().to_string(),
            lab_version: lab.manifest.version.clone(),
            points: numerics.points + ft_points,
            max_points: numerics.max_points + lab.manifest.grading.points,
            numerics,
            fine_tune,
            feedback,
        })))
    };
    let t0 = Instant::now();
    let out = run().unwrap_or_else(|e| {
        tracing::error!(lab = %lab.id(), error = %e, "code-lab grader failure");
        CodeOutcome::NotGradable {
            reason: e.to_string(),
        }
    });
    tracing::info!(lab = %lab.id(), points = ?out.points(), wall_s = t0.elapsed().as_secs_f64(), "graded code submission");
    out
}
