//! The `[code]` table of a code lab's `lab.toml`.
//!
//! ```toml
//! [code]
//! harness = "lora"          # the labkit harness the submission runs under
//! starter = "starter"       # crate folders inside the lab
//! solution = "solution"
//!
//! [code.numerics]
//! seed = 20261129           # seed of the grader's hidden test inputs
//! tolerance = 1e-4          # |got − expected| ≤ tolerance · (1 + |expected|)
//! timeout_seconds = 60
//!
//! [code.numerics.points]    # points per hidden numerical test
//! init = 10
//! forward = 15
//! batched = 10
//! merge = 15
//! gradients = 10
//!
//! [code.fine_tune]
//! max_rank = 8              # the rank budget
//! max_steps = 1000
//! seed = 0
//! eval_every = 50
//! timeout_seconds = 240
//! ```
//!
//! The fine-tuning run is scored by `[grading]` (metric, baseline, target,
//! points) on the hidden split, like a recipe lab.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::lab::{is_safe_relative, LabError};

/// Harnesses this runner can grade.
pub const HARNESSES: &[&str] = &["lora"];

/// The hidden numerical tests of the `lora` harness, in report order.
pub const LORA_TESTS: &[&str] = &["init", "forward", "batched", "merge", "gradients"];

/// `[code]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSpec {
    /// The labkit harness (`lora`).
    pub harness: String,
    /// Folder of the starter crate (default `starter`).
    #[serde(default = "default_starter")]
    pub starter: String,
    /// Folder of the solution crate (default `solution`).
    #[serde(default = "default_solution")]
    pub solution: String,
    pub numerics: NumericsSpec,
    pub fine_tune: FineTuneSpec,
}

fn default_starter() -> String {
    "starter".into()
}

fn default_solution() -> String {
    "solution".into()
}

/// `[code.numerics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericsSpec {
    /// Seed of the hidden test inputs.
    pub seed: u64,
    /// Relative tolerance: `|got − expected| ≤ tolerance · (1 + |expected|)`.
    pub tolerance: f64,
    pub timeout_seconds: u64,
    /// Points per test (names from [`LORA_TESTS`]).
    pub points: BTreeMap<String, f64>,
}

/// `[code.fine_tune]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneSpec {
    /// Largest LoRA rank a submission may use.
    pub max_rank: usize,
    /// Largest number of optimizer steps.
    pub max_steps: u64,
    /// Seed of the run (head initialisation, adapter initialisation, batches).
    pub seed: u64,
    /// Steps between validation evaluations.
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    pub timeout_seconds: u64,
}

fn default_eval_every() -> u64 {
    50
}

impl CodeSpec {
    /// Check the values; errors name the file and the field.
    pub fn check(&self, file: &Path, lab_dir: &Path) -> Result<(), LabError> {
        if !HARNESSES.contains(&self.harness.as_str()) {
            return Err(LabError::invalid(
                file,
                "code.harness",
                format!("one of {HARNESSES:?}"),
            ));
        }
        for (field, rel) in [
            ("code.starter", &self.starter),
            ("code.solution", &self.solution),
        ] {
            if !is_safe_relative(rel) || !lab_dir.join(rel).join("Cargo.toml").is_file() {
                return Err(LabError::invalid(
                    file,
                    field,
                    format!("a crate folder inside the lab with a Cargo.toml (found `{rel}`)"),
                ));
            }
        }
        let n = &self.numerics;
        if !(n.tolerance.is_finite() && n.tolerance > 0.0 && n.tolerance < 1.0) {
            return Err(LabError::invalid(
                file,
                "code.numerics.tolerance",
                "a number strictly between 0 and 1",
            ));
        }
        if n.timeout_seconds == 0 || n.timeout_seconds > 3600 {
            return Err(LabError::invalid(
                file,
                "code.numerics.timeout_seconds",
                "between 1 and 3600",
            ));
        }
        if let Some(bad) = n.points.keys().find(|k| !LORA_TESTS.contains(&k.as_str())) {
            return Err(LabError::invalid(
                file,
                format!("code.numerics.points.{bad}"),
                format!("a test of the lora harness: {LORA_TESTS:?}"),
            ));
        }
        if n.points.is_empty() {
            return Err(LabError::invalid(
                file,
                "code.numerics.points",
                "points for at least one test",
            ));
        }
        if let Some((k, _)) = n.points.iter().find(|(_, p)| !(p.is_finite() && **p > 0.0)) {
            return Err(LabError::invalid(
                file,
                format!("code.numerics.points.{k}"),
                "a positive number",
            ));
        }
        let f = &self.fine_tune;
        if f.max_rank == 0 || f.max_rank > 1024 {
            return Err(LabError::invalid(
                file,
                "code.fine_tune.max_rank",
                "between 1 and 1024",
            ));
        }
        if f.max_steps == 0 || f.max_steps > 200_000 {
            return Err(LabError::invalid(
                file,
                "code.fine_tune.max_steps",
                "between 1 and 200000",
            ));
        }
        if f.eval_every == 0 {
            return Err(LabError::invalid(
                file,
                "code.fine_tune.eval_every",
                "a positive number",
            ));
        }
        if f.timeout_seconds == 0 || f.timeout_seconds > 24 * 3600 {
            return Err(LabError::invalid(
                file,
                "code.fine_tune.timeout_seconds",
                "between 1 and 86400",
            ));
        }
        Ok(())
    }

    /// Points of the numerical tests together.
    pub fn numerics_points(&self) -> f64 {
        self.numerics.points.values().sum()
    }
}
