//! `lab check` for code labs.
//!
//! Steps: load and check the package; check the base checkpoint; grade the
//! model before fine-tuning (frozen base, fresh head); build the starter and
//! the solution crates (or take binaries already built); prepare the
//! training data once; grade both submissions through the process protocol.
//! The starter must earn less than half the points; the solution must pass
//! every numerical test and, in a full run, reach the fine-tuning target.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    code_spec, finetune, grade_submission_isolated, CodeLabError, CodeOutcome, GradeOptions,
    Isolation,
};
use crate::check::peak_rss_mib;
use crate::grade::{grade_weights, GradeOutcome};
use crate::lab::{Lab, MAX_BASE_CHECKPOINT_BYTES};
use crate::programs::program_for;
use crate::train::events::Event;

/// The starter's and the solution's binaries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binaries {
    pub starter: PathBuf,
    pub solution: PathBuf,
}

/// Options of a code-lab check.
#[derive(Debug, Clone)]
pub struct CodeCheckOptions {
    /// Scales the submissions' step counts (quick checks use 0.25).
    pub step_scale: f64,
    /// Where runs write their files; a temporary folder when `None`.
    pub work_dir: Option<PathBuf>,
    /// Binaries built already; when `None` the crates are built with cargo.
    pub binaries: Option<Binaries>,
}

/// Progress notifications.
pub enum CodeCheckProgress<'a> {
    Phase(&'a str),
    Event(&'a Event),
}

/// One submission's grade within the check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmissionRun {
    pub name: String,
    pub binary: PathBuf,
    pub outcome: CodeOutcome,
    pub wall_s: f64,
    /// Peak resident memory of the submission's processes, in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The result of a code-lab check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeCheckReport {
    pub lab_id: String,
    pub step_scale: f64,
    pub base_bytes: u64,
    /// The base before fine-tuning (frozen layers, fresh head), graded.
    pub before: GradeOutcome,
    pub starter: SubmissionRun,
    pub solution: SubmissionRun,
    /// Numerical tests plus fine-tuning.
    pub max_points: f64,
    pub fine_tune_target: f64,
    /// Seconds spent building the crates (0 when binaries were given).
    pub build_s: f64,
    pub failures: Vec<String>,
    pub wall_s: f64,
    /// Peak resident memory of the checking process, in MiB.
    pub peak_rss_mib: Option<f64>,
}

impl CodeCheckReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Build a submission crate with cargo and return its binary. Used by the
/// `sanhak lab check` command; inside the runner service, compiling happens
/// in the sandbox instead.
pub fn cargo_build(krate: &Path) -> Result<PathBuf, CodeLabError> {
    let manifest = krate.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CodeLabError::Build {
            krate: krate.to_path_buf(),
            message: format!("cannot run cargo: {e}"),
        })?;
    let stdout = child.stdout.take().ok_or_else(|| CodeLabError::Build {
        krate: krate.to_path_buf(),
        message: "no stdout".into(),
    })?;
    let mut executable = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            if let Some(exe) = msg["executable"].as_str() {
                executable = Some(PathBuf::from(exe));
            }
        }
    }
    let status = child.wait().map_err(|e| CodeLabError::Build {
        krate: krate.to_path_buf(),
        message: e.to_string(),
    })?;
    if !status.success() {
        return Err(CodeLabError::Build {
            krate: krate.to_path_buf(),
            message: format!("cargo build exited with {status}"),
        });
    }
    executable.ok_or_else(|| CodeLabError::Build {
        krate: krate.to_path_buf(),
        message: "cargo built no binary".into(),
    })
}

/// Run the whole check.
pub fn check_code_lab(
    dir: &Path,
    opts: &CodeCheckOptions,
    progress: &mut dyn FnMut(CodeCheckProgress<'_>),
) -> Result<CodeCheckReport, CodeLabError> {
    let t0 = Instant::now();
    progress(CodeCheckProgress::Phase("validating package"));
    let lab = Lab::load(dir)?;
    let spec = code_spec(&lab)?.clone();
    let g = lab.manifest.grading.clone();
    let mut failures = Vec::new();
    if !(opts.step_scale > 0.0 && opts.step_scale <= 1.0) {
        return Err(CodeLabError::Other(format!(
            "step scale must be in (0, 1], got {}",
            opts.step_scale
        )));
    }

    let base_path = lab.base_checkpoint_path()?;
    let base_bytes = std::fs::metadata(&base_path)
        .map_err(|_| {
            CodeLabError::Other(format!(
                "base checkpoint {} is missing: run `sanhak lab build-base {}`",
                base_path.display(),
                lab.id()
            ))
        })?
        .len();
    if base_bytes > MAX_BASE_CHECKPOINT_BYTES {
        failures.push(format!(
            "base checkpoint is {base_bytes} bytes, more than the 5 MB limit"
        ));
    }

    progress(CodeCheckProgress::Phase(
        "grading the model before fine-tuning",
    ));
    let program = program_for(&lab)?;
    let before = grade_weights(
        &lab,
        program.as_ref(),
        &program.initial_weights(&lab, spec.fine_tune.seed)?,
        None,
    );

    let tb = Instant::now();
    let binaries = match &opts.binaries {
        Some(b) => b.clone(),
        None => {
            progress(CodeCheckProgress::Phase("building the starter"));
            let starter = cargo_build(&lab.dir().join(&spec.starter))?;
            progress(CodeCheckProgress::Phase("building the solution"));
            let solution = cargo_build(&lab.dir().join(&spec.solution))?;
            Binaries { starter, solution }
        }
    };
    let build_s = if opts.binaries.is_some() {
        0.0
    } else {
        tb.elapsed().as_secs_f64()
    };

    let (work, cleanup) = match &opts.work_dir {
        Some(w) => (w.clone(), false),
        None => (
            std::env::temp_dir().join(format!("sanhak-check-{}-{}", lab.id(), std::process::id())),
            true,
        ),
    };
    progress(CodeCheckProgress::Phase("preparing the training data"));
    let data = finetune::prepare_data(&lab, &work.join("data"))?;

    // The lab's own binaries: sandboxed where bwrap is installed, a plain
    // child process on an author's machine without it.
    let isolation = Isolation::for_lab_check();
    let mut runs = Vec::new();
    for (name, binary) in [
        ("starter", &binaries.starter),
        ("solution", &binaries.solution),
    ] {
        progress(CodeCheckProgress::Phase(name));
        let ts = Instant::now();
        let gopts = GradeOptions {
            step_scale: opts.step_scale,
            work_dir: work.join(name),
        };
        let outcome =
            grade_submission_isolated(&lab, binary, &data, &gopts, &isolation, &mut |p| match p {
                super::GradeProgress::Phase(ph) => progress(CodeCheckProgress::Phase(ph)),
                super::GradeProgress::Event(e) => progress(CodeCheckProgress::Event(e)),
            });
        let peak = outcome.grade().and_then(|g| {
            [g.numerics.peak_rss_mib, g.fine_tune.peak_rss_mib]
                .into_iter()
                .flatten()
                .reduce(f64::max)
        });
        runs.push(SubmissionRun {
            name: name.to_string(),
            binary: binary.clone(),
            outcome,
            wall_s: ts.elapsed().as_secs_f64(),
            peak_rss_mib: peak,
        });
    }
    if cleanup {
        let _ = std::fs::remove_dir_all(&work);
    }
    let solution = runs
        .pop()
        .ok_or_else(|| CodeLabError::Other("no solution run".into()))?;
    let starter = runs
        .pop()
        .ok_or_else(|| CodeLabError::Other("no starter run".into()))?;

    let max_points = spec.numerics_points() + g.points;
    let quick = opts.step_scale < 1.0;
    for run in [&starter, &solution] {
        if let CodeOutcome::NotGradable { reason } = &run.outcome {
            failures.push(format!("{}: not gradable: {reason}", run.name));
        }
    }
    let sp = starter.outcome.points().unwrap_or(0.0);
    if sp >= max_points / 2.0 {
        failures.push(format!(
            "the starter earns {sp:.1} of {max_points} points; it must earn less than half"
        ));
    }
    if let Some(sol) = solution.outcome.grade() {
        for t in sol.numerics.tests.iter().filter(|t| !t.passed) {
            failures.push(format!("solution: {}", t.message));
        }
        match &sol.fine_tune.outcome {
            GradeOutcome::Graded(r) => {
                if !quick && !r.reaches_target {
                    failures.push(format!(
                        "the solution's fine-tuning reaches {} = {:.4}, short of the target {}",
                        g.metric, r.metric, g.target
                    ));
                }
                let starter_ft = starter
                    .outcome
                    .grade()
                    .and_then(|s| s.fine_tune.outcome.points())
                    .unwrap_or(0.0);
                if quick && r.points <= starter_ft && r.points < g.points {
                    failures.push(format!(
                        "the solution's fine-tuning ({:.1} points) does not beat the starter's ({starter_ft:.1})",
                        r.points
                    ));
                }
            }
            GradeOutcome::Rejected { reason } => {
                failures.push(format!("solution: fine-tuning rejected: {reason}"))
            }
            GradeOutcome::NotGradable { .. } => {}
        }
    }
    Ok(CodeCheckReport {
        lab_id: lab.id().to_string(),
        step_scale: opts.step_scale,
        base_bytes,
        before,
        starter,
        solution,
        max_points,
        fine_tune_target: g.target,
        build_s,
        failures,
        wall_s: t0.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
    })
}
