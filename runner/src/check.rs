//! `lab check`: validate a lab package and prove its rubric means something.
//!
//! Steps: load and check the package; check the base checkpoint (present,
//! ≤ 5 MB, the right architecture); validate the starter and solution recipes;
//! score the model before fine-tuning; run and grade the starter (must earn
//! less than half the points) and the solution (must reach the target).
//!
//! With `step_scale < 1` (quick mode, for tests), steps are scaled down; the
//! starter must still earn less than half the points and the solution must
//! still beat the starter, but reaching the target is only asserted in full runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::grade::{grade_checkpoint, grade_weights, GradeOutcome};
use crate::lab::{Lab, LabError, LabKind, MAX_BASE_CHECKPOINT_BYTES};
use crate::programs::{program_for, run_program, ProgramError};
use crate::recipe::{Recipe, RecipeErrors};
use crate::train::events::{Event, EventSink, FnSink};
use crate::train::RunOptions;

/// Starter and solution recipe locations inside a recipe lab.
pub const STARTER_RECIPE: &str = "starter/recipe.toml";
pub const SOLUTION_RECIPE: &str = "solution/recipe.toml";

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Recipe(#[from] RecipeErrors),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("{0}")]
    Other(String),
}

/// Options of `lab check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub run: RunOptions,
    /// Where runs write checkpoints; a temporary folder when `None`.
    pub work_dir: Option<PathBuf>,
    /// Shared pretrained models (`<data_dir>/models`), for labs that use one.
    pub models_dir: Option<PathBuf>,
}

/// Progress notifications for a progress bar.
pub enum CheckProgress<'a> {
    Phase(&'a str),
    Event(&'a Event),
}

/// One recipe run and its grade.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeRun {
    pub name: String,
    pub steps: u64,
    pub valid_metric: Option<f64>,
    pub outcome: GradeOutcome,
    pub wall_s: f64,
}

/// The result of `lab check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub lab_id: String,
    /// The shared pretrained model trained instead of the lab's own base.
    pub variant: Option<String>,
    pub step_scale: f64,
    pub base_bytes: u64,
    /// The model before fine-tuning, graded.
    pub before: GradeOutcome,
    pub starter: RecipeRun,
    pub solution: RecipeRun,
    pub max_points: f64,
    pub target: f64,
    /// Problems found; empty means the check passed.
    pub failures: Vec<String>,
    pub wall_s: f64,
    /// Peak resident memory of this process, in MiB (Linux).
    pub peak_rss_mib: Option<f64>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Read and validate a recipe file of the lab.
pub fn load_recipe(lab: &Lab, path: &Path) -> Result<Recipe, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    Ok(lab.schema()?.validate(&text, &path.display().to_string())?)
}

/// `rel` (`starter/recipe.toml`), or its `recipe.<variant>.toml` sibling
/// when the program trains a variant and the lab has a recipe for it.
pub fn recipe_file(lab: &Lab, rel: &str, variant: Option<&str>) -> PathBuf {
    let plain = lab.dir().join(rel);
    variant
        .map(|v| plain.with_file_name(format!("recipe.{v}.toml")))
        .filter(|p| p.is_file())
        .unwrap_or(plain)
}

/// Train a recipe and grade the result.
pub fn run_and_grade(
    lab: &Lab,
    recipe: &Recipe,
    name: &str,
    out_dir: &Path,
    opts: &RunOptions,
    sink: &mut dyn EventSink,
) -> Result<RecipeRun, CheckError> {
    let t0 = Instant::now();
    let outcome = run_program(lab, recipe, out_dir, opts, sink)?;
    let grade = grade_checkpoint(lab, &outcome.checkpoint, Some(&outcome.curve));
    Ok(RecipeRun {
        name: name.to_string(),
        steps: outcome.steps,
        valid_metric: outcome.valid_metric,
        outcome: grade,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// Run the whole check.
pub fn check_lab(
    dir: &Path,
    opts: &CheckOptions,
    progress: &mut dyn FnMut(CheckProgress<'_>),
) -> Result<CheckReport, CheckError> {
    let t0 = Instant::now();
    progress(CheckProgress::Phase("validating package"));
    let mut lab = Lab::load(dir)?;
    if let Some(m) = &opts.models_dir {
        lab = lab.with_models_dir(m);
    }
    if lab.manifest.kind == LabKind::Code {
        return Err(CheckError::Other(format!(
            "{} is a code lab: check it with `crate::codelab::check::check_code_lab` (`sanhak lab check` does this)",
            lab.id()
        )));
    }
    let program = program_for(&lab)?;
    let g = program.grading(&lab)?;
    let mut failures = Vec::new();

    let base_path = lab.base_checkpoint_path()?;
    let base_bytes = std::fs::metadata(&base_path)
        .map_err(|_| {
            CheckError::Other(format!(
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

    let variant = program.variant(&lab);
    let starter = load_recipe(&lab, &recipe_file(&lab, STARTER_RECIPE, variant.as_deref()))?;
    let solution = load_recipe(
        &lab,
        &recipe_file(&lab, SOLUTION_RECIPE, variant.as_deref()),
    )?;

    progress(CheckProgress::Phase("grading the model before fine-tuning"));
    let seed = crate::train::TrainConfig::from_recipe(&solution).seed;
    let before = grade_weights(
        &lab,
        program.as_ref(),
        &program.initial_weights(&lab, seed)?,
        None,
    );

    let (work, cleanup) = match &opts.work_dir {
        Some(w) => (w.clone(), false),
        None => (
            std::env::temp_dir().join(format!("sanhak-check-{}-{}", lab.id(), std::process::id())),
            true,
        ),
    };
    let mut runs = Vec::new();
    for (name, recipe) in [("starter", &starter), ("solution", &solution)] {
        progress(CheckProgress::Phase(name));
        let mut sink = FnSink(|e: &Event| progress(CheckProgress::Event(e)));
        let run = run_and_grade(&lab, recipe, name, &work.join(name), &opts.run, &mut sink);
        runs.push(run);
    }
    if cleanup {
        let _ = std::fs::remove_dir_all(&work);
    }
    let solution_run = runs
        .pop()
        .ok_or_else(|| CheckError::Other("no solution run".into()))??;
    let starter_run = runs
        .pop()
        .ok_or_else(|| CheckError::Other("no starter run".into()))??;

    let quick = opts.run.step_scale < 1.0;
    for run in [&starter_run, &solution_run] {
        match &run.outcome {
            GradeOutcome::Graded(_) => {}
            GradeOutcome::Rejected { reason } | GradeOutcome::NotGradable { reason } => {
                failures.push(format!("{}: not graded: {reason}", run.name));
            }
        }
    }
    let sp = starter_run.outcome.points().unwrap_or(0.0);
    let lp = solution_run.outcome.points().unwrap_or(0.0);
    if sp >= g.points / 2.0 {
        failures.push(format!(
            "the starter earns {sp:.1} of {} points; it must earn less than half",
            g.points
        ));
    }
    if quick {
        if lp <= sp {
            failures.push(format!(
                "the solution ({lp:.1} points) does not beat the starter ({sp:.1})"
            ));
        }
    } else if let GradeOutcome::Graded(r) = &solution_run.outcome {
        if !r.reaches_target {
            failures.push(format!(
                "the solution reaches {} = {:.4}, short of the target {}",
                g.metric, r.metric, g.target
            ));
        }
    }
    Ok(CheckReport {
        lab_id: lab.id().to_string(),
        variant,
        step_scale: opts.run.step_scale,
        base_bytes,
        before,
        starter: starter_run,
        solution: solution_run,
        max_points: g.points,
        target: g.target,
        failures,
        wall_s: t0.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
    })
}
