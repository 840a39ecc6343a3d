//! Lab packages: `labs/<id>/lab.toml` and the folder around it.
//!
//! [`LabManifest`] is the typed form of `lab.toml` (every table denies unknown
//! fields). [`Lab::load`] parses it and checks the folder: the required files,
//! that every referenced file exists inside the folder, that public splits live
//! under `data/` and the graded split under `hidden/`, that the recipe schema
//! only uses standard parameters within their hard bounds, and that the
//! training program accepts its settings. Every error names the file, the field
//! and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::recipe::RecipeSchema;

/// The manifest file name inside a lab folder.
pub const MANIFEST_FILE: &str = "lab.toml";
/// Folder of public splits.
pub const PUBLIC_DATA_DIR: &str = "data";
/// Folder of hidden splits, read only by the grader.
pub const HIDDEN_DATA_DIR: &str = "hidden";
/// Largest base checkpoint a lab may commit.
pub const MAX_BASE_CHECKPOINT_BYTES: u64 = 5 * 1024 * 1024;

/// An error in a lab package: always names the file, the field and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: field `{field}`: expected {expected}")]
    Invalid {
        file: PathBuf,
        field: String,
        expected: String,
    },
}

impl LabError {
    pub(crate) fn invalid(
        file: &Path,
        field: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        LabError::Invalid {
            file: file.to_path_buf(),
            field: field.into(),
            expected: expected.into(),
        }
    }
}

/// `recipe` labs take a TOML recipe; `code` labs take Rust code against labkit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabKind {
    Recipe,
    Code,
}

/// The typed form of `lab.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabManifest {
    /// Short identifier, `[a-z0-9-]`, equal to the folder name.
    pub id: String,
    pub title: String,
    /// One-paragraph summary shown in lab lists.
    pub summary: String,
    /// Version of the lab package (any string; recorded with every grade).
    pub version: String,
    pub kind: LabKind,
    pub program: ProgramSpec,
    /// The pretrained model students start from.
    pub base: Option<BaseSpec>,
    /// Data splits: split name → role → path relative to the lab folder.
    pub data: BTreeMap<String, BTreeMap<String, String>>,
    /// The recipe schema (required for `recipe` labs).
    pub recipe: Option<RecipeSchema>,
    /// The code-lab table (required for `code` labs, refused for `recipe` labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::codelab::spec::CodeSpec>,
    pub grading: Grading,
    pub limits: Limits,
}

/// The training program and its fixed architecture settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// A program name known to the runner, e.g. `image-classifier`.
    pub name: String,
    /// Program-specific settings; the program parses and checks them.
    #[serde(default)]
    pub settings: toml::Table,
}

/// The base checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// Path of the safetensors file, relative to the lab folder.
    pub checkpoint: String,
    /// Seed of `sanhak lab build-base`.
    pub seed: u64,
    /// Program-specific settings of `build-base` (steps, learning rate, …).
    #[serde(default)]
    pub build: toml::Table,
}

/// Whether a larger metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Higher,
    Lower,
}

/// What the grader reports besides the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackItem {
    /// The metric on the public part of the hidden split.
    PublicMetric,
    /// The metric on the private part (shown after the deadline).
    PrivateMetric,
    /// Accuracy per class (classification programs).
    PerClass,
    /// Confusion matrix (classification programs).
    ConfusionMatrix,
    /// Summary of the training curve.
    TrainingCurve,
    /// What to try next when the score is low.
    Hints,
}

/// A hint shown when the score is below a number of points.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hint {
    pub below_points: f64,
    pub text: String,
}

/// The rubric.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grading {
    /// Metric name; must be the metric the program computes.
    pub metric: String,
    pub direction: Direction,
    /// Metric worth zero points.
    pub baseline: f64,
    /// Metric worth full points (what a sensible standard recipe reaches).
    pub target: f64,
    /// Full points.
    pub points: f64,
    /// The hidden split graded (its files must be under `hidden/`).
    pub split: String,
    /// Fraction of the hidden split that is public (0 < f < 1).
    pub public_fraction: f64,
    #[serde(default)]
    pub feedback: Vec<FeedbackItem>,
    #[serde(default)]
    pub hints: Vec<Hint>,
}

impl Grading {
    /// Points for a metric: linear between baseline (0) and target (full), clamped.
    pub fn points_for(&self, metric: f64) -> f64 {
        if !metric.is_finite() {
            return 0.0;
        }
        let frac = (metric - self.baseline) / (self.target - self.baseline);
        frac.clamp(0.0, 1.0) * self.points
    }

    /// Whether a metric reaches the target.
    pub fn reaches_target(&self, metric: f64) -> bool {
        match self.direction {
            Direction::Higher => metric >= self.target,
            Direction::Lower => metric <= self.target,
        }
    }
}

/// Resource limits of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub wall_seconds: u64,
    pub memory_mb: u64,
    pub threads: u32,
    #[serde(default)]
    pub gpu_memory_mb: u64,
    /// GPU-seconds a run is expected to cost (charged to the budget up front).
    #[serde(default)]
    pub expected_gpu_seconds: f64,
}

/// A loaded, checked lab package.
#[derive(Debug, Clone)]
pub struct Lab {
    dir: PathBuf,
    pub manifest: LabManifest,
    /// Where shared pretrained models are installed (`<data_dir>/models`), for
    /// programs that use one when it is there (see [`Lab::with_models_dir`]).
    models_dir: Option<PathBuf>,
    /// Loaded as a sandbox sees it: without `hidden/` and `solution/`.
    public_only: bool,
}

/// A valid lab id: lowercase letters, digits and `-`, at most 64.
pub fn is_lab_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// A relative path with only normal components (no `..`, no root, no prefix).
pub fn is_safe_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && !path.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

impl Lab {
    /// Parse `lab.toml` only (no folder checks). `file` is used in messages.
    pub fn parse_manifest(text: &str, file: &Path) -> Result<LabManifest, LabError> {
        toml::from_str(text).map_err(|e| LabError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Load and check a lab folder.
    pub fn load(dir: &Path) -> Result<Lab, LabError> {
        Self::load_with(dir, false)
    }

    /// Load a lab package as a training sandbox sees it: the runner hands the
    /// sandbox only the public part (no `hidden/`, no `solution/`), so those
    /// are not required here. Everything else is checked as in [`Lab::load`],
    /// and [`Lab::hidden_file`] fails on such a lab.
    pub fn load_public(dir: &Path) -> Result<Lab, LabError> {
        Self::load_with(dir, true)
    }

    /// Whether a path inside a lab package belongs only to the trusted side
    /// (hidden splits and the reference solution), never to a sandbox.
    pub fn is_trusted_only(rel: &Path) -> bool {
        matches!(
            rel.components().next(),
            Some(Component::Normal(top)) if top == HIDDEN_DATA_DIR || top == "solution"
        )
    }

    /// [`Lab::is_trusted_only`], plus this lab's own solution folder when its
    /// `[code]` names another one.
    pub fn is_trusted_path(&self, rel: &Path) -> bool {
        Self::is_trusted_only(rel)
            || self
                .manifest
                .code
                .as_ref()
                .is_some_and(|c| rel.starts_with(&c.solution))
    }

    fn load_with(dir: &Path, public_only: bool) -> Result<Lab, LabError> {
        let file = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&file).map_err(|source| LabError::Io {
            file: file.clone(),
            source,
        })?;
        let manifest = Self::parse_manifest(&text, &file)?;
        let lab = Lab {
            dir: dir.to_path_buf(),
            manifest,
            models_dir: None,
            public_only,
        };
        lab.check()?;
        Ok(lab)
    }

    /// Let the lab's program use the shared pretrained models installed in
    /// `dir` (by `sanhak model fetch`). Without it a program that can use one
    /// falls back to the lab's own base checkpoint.
    pub fn with_models_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.models_dir = Some(dir.into());
        self
    }

    /// The shared models folder, when set.
    pub fn models_dir(&self) -> Option<&Path> {
        self.models_dir.as_deref()
    }

    /// The lab folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `lab.toml` (for messages).
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    fn check(&self) -> Result<(), LabError> {
        let m = &self.manifest;
        let file = self.manifest_path();
        if !is_lab_id(&m.id) {
            return Err(LabError::invalid(
                &file,
                "id",
                "lowercase letters, digits and '-', at most 64",
            ));
        }
        if let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) {
            if name != m.id {
                return Err(LabError::invalid(
                    &file,
                    "id",
                    format!("the folder name `{name}` (found `{}`)", m.id),
                ));
            }
        }
        for (field, v) in [
            ("title", &m.title),
            ("summary", &m.summary),
            ("version", &m.version),
        ] {
            if v.trim().is_empty() {
                return Err(LabError::invalid(&file, field, "a non-empty string"));
            }
        }
        // Required files and folders.
        for (what, rel, folder) in [
            ("README.md", "README.md", false),
            ("DATA.md", "DATA.md", false),
            ("starter/", "starter", true),
            ("solution/", "solution", true),
        ] {
            if self.public_only && rel == "solution" {
                continue;
            }
            let p = self.dir.join(rel);
            let ok = if folder { p.is_dir() } else { p.is_file() };
            if !ok {
                return Err(LabError::invalid(
                    &self.dir,
                    what,
                    "this file or folder to exist in the lab package",
                ));
            }
        }
        // Data splits.
        if m.data.is_empty() {
            return Err(LabError::invalid(&file, "data", "at least one split"));
        }
        for (split, roles) in &m.data {
            for (role, rel) in roles {
                let field = format!("data.{split}.{role}");
                if !(self.public_only && self.is_hidden_path(rel)) {
                    self.checked_file(rel, &field)?;
                }
                let top = Path::new(rel).components().next();
                let in_dir = |d: &str| top == Some(Component::Normal(d.as_ref()));
                if !(in_dir(PUBLIC_DATA_DIR) || in_dir(HIDDEN_DATA_DIR)) {
                    return Err(LabError::invalid(
                        &file,
                        field,
                        "a path under data/ or hidden/",
                    ));
                }
            }
        }
        // Grading.
        let g = &m.grading;
        let split = m.data.get(&g.split).ok_or_else(|| {
            LabError::invalid(&file, "grading.split", "the name of a split in [data]")
        })?;
        if !split.values().all(|p| self.is_hidden_path(p)) {
            return Err(LabError::invalid(
                &file,
                "grading.split",
                "a split whose files are all under hidden/",
            ));
        }
        for (field, v) in [
            ("grading.baseline", g.baseline),
            ("grading.target", g.target),
            ("grading.points", g.points),
        ] {
            if !v.is_finite() {
                return Err(LabError::invalid(&file, field, "a finite number"));
            }
        }
        if g.points <= 0.0 {
            return Err(LabError::invalid(
                &file,
                "grading.points",
                "a positive number",
            ));
        }
        let ordered = match g.direction {
            Direction::Higher => g.target > g.baseline,
            Direction::Lower => g.target < g.baseline,
        };
        if !ordered {
            return Err(LabError::invalid(
                &file,
                "grading.target",
                "a target better than the baseline in the grading direction",
            ));
        }
        if !(g.public_fraction > 0.0 && g.public_fraction < 1.0) {
            return Err(LabError::invalid(
                &file,
                "grading.public_fraction",
                "a number strictly between 0 and 1",
            ));
        }
        for (i, h) in g.hints.iter().enumerate() {
            if !h.below_points.is_finite() || h.text.trim().is_empty() {
                return Err(LabError::invalid(
                    &file,
                    format!("grading.hints[{i}]"),
                    "a finite below_points and a non-empty text",
                ));
            }
        }
        // Limits.
        let l = &m.limits;
        if l.wall_seconds == 0 || l.memory_mb == 0 || l.threads == 0 {
            return Err(LabError::invalid(
                &file,
                "limits",
                "positive wall_seconds, memory_mb and threads",
            ));
        }
        if !(l.expected_gpu_seconds.is_finite() && l.expected_gpu_seconds >= 0.0) {
            return Err(LabError::invalid(
                &file,
                "limits.expected_gpu_seconds",
                "a finite number ≥ 0",
            ));
        }
        // Base checkpoint path (the file itself may be missing until build-base).
        if let Some(base) = &m.base {
            if !is_safe_relative(&base.checkpoint) || !base.checkpoint.ends_with(".safetensors") {
                return Err(LabError::invalid(
                    &file,
                    "base.checkpoint",
                    "a relative .safetensors path inside the lab folder",
                ));
            }
        }
        // Recipe schema and program.
        let program = crate::programs::program_by_name(&m.program.name).map_err(|_| {
            LabError::invalid(
                &file,
                "program.name",
                format!("one of {:?}", crate::programs::PROGRAM_NAMES),
            )
        })?;
        match (&m.recipe, m.kind) {
            (None, LabKind::Recipe) => {
                return Err(LabError::invalid(
                    &file,
                    "recipe",
                    "a [recipe] schema for a recipe lab",
                ));
            }
            (Some(schema), _) => schema.check(&file, program.supported_params())?,
            (None, LabKind::Code) => {}
        }
        match (&m.code, m.kind) {
            (Some(code), LabKind::Code) => code.check(&file, &self.dir)?,
            (None, LabKind::Code) => {
                return Err(LabError::invalid(
                    &file,
                    "code",
                    "a [code] table (harness, numerical tests, fine-tuning) for a code lab",
                ));
            }
            (Some(_), LabKind::Recipe) => {
                return Err(LabError::invalid(
                    &file,
                    "code",
                    "no [code] table in a recipe lab (set kind = \"code\")",
                ));
            }
            (None, LabKind::Recipe) => {}
        }
        if m.grading.metric != program.metric_name() {
            return Err(LabError::invalid(
                &file,
                "grading.metric",
                format!(
                    "`{}` (the metric of program {})",
                    program.metric_name(),
                    program.name()
                ),
            ));
        }
        program.check_lab(self)?;
        Ok(())
    }

    fn is_hidden_path(&self, rel: &str) -> bool {
        Path::new(rel).components().next() == Some(Component::Normal(HIDDEN_DATA_DIR.as_ref()))
    }

    /// Resolve a relative path from the manifest: no escape, must exist, and
    /// (after resolving symlinks) must stay inside the lab folder.
    pub fn checked_file(&self, rel: &str, field: &str) -> Result<PathBuf, LabError> {
        let file = self.manifest_path();
        if !is_safe_relative(rel) {
            return Err(LabError::invalid(
                &file,
                field,
                "a relative path inside the lab folder (no `..`, no leading `/`)",
            ));
        }
        let p = self.dir.join(rel);
        if !p.is_file() {
            return Err(LabError::invalid(
                &file,
                field,
                format!("an existing file at `{rel}`"),
            ));
        }
        let root = self.dir.canonicalize().map_err(|source| LabError::Io {
            file: self.dir.clone(),
            source,
        })?;
        let real = p.canonicalize().map_err(|source| LabError::Io {
            file: p.clone(),
            source,
        })?;
        if !real.starts_with(&root) {
            return Err(LabError::invalid(
                &file,
                field,
                "a file that resolves inside the lab folder",
            ));
        }
        Ok(p)
    }

    /// A file of a public split (under `data/`). Refuses hidden splits: training
    /// code must never see them.
    pub fn public_file(&self, split: &str, role: &str) -> Result<PathBuf, LabError> {
        self.split_file(split, role, false)
    }

    /// A file of a hidden split; only the grader calls this. On a lab loaded
    /// with [`Lab::load_public`] the path is checked but the file is absent.
    pub fn hidden_file(&self, split: &str, role: &str) -> Result<PathBuf, LabError> {
        self.split_file(split, role, true)
    }

    fn split_file(&self, split: &str, role: &str, hidden: bool) -> Result<PathBuf, LabError> {
        let field = format!("data.{split}.{role}");
        let rel = self
            .manifest
            .data
            .get(split)
            .and_then(|r| r.get(role))
            .ok_or_else(|| {
                LabError::invalid(
                    &self.manifest_path(),
                    &field,
                    "this split and role to be declared",
                )
            })?;
        if self.is_hidden_path(rel) != hidden {
            let expected = if hidden {
                "a path under hidden/"
            } else {
                "a path under data/"
            };
            return Err(LabError::invalid(&self.manifest_path(), &field, expected));
        }
        if hidden && self.public_only {
            // A sandbox's copy has no hidden files: the declaration is checked,
            // the file cannot be read here.
            if !is_safe_relative(rel) {
                return Err(LabError::invalid(
                    &self.manifest_path(),
                    &field,
                    "a relative path inside the lab folder (no `..`, no leading `/`)",
                ));
            }
            return Ok(self.dir.join(rel));
        }
        self.checked_file(rel, &field)
    }

    /// Path of the base checkpoint (which may not exist yet).
    pub fn base_checkpoint_path(&self) -> Result<PathBuf, LabError> {
        let base =
            self.manifest.base.as_ref().ok_or_else(|| {
                LabError::invalid(&self.manifest_path(), "base", "a [base] table")
            })?;
        Ok(self.dir.join(&base.checkpoint))
    }

    /// The recipe schema (recipe labs always have one).
    pub fn schema(&self) -> Result<&RecipeSchema, LabError> {
        self.manifest
            .recipe
            .as_ref()
            .ok_or_else(|| LabError::invalid(&self.manifest_path(), "recipe", "a [recipe] schema"))
    }
}

impl fmt::Display for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.manifest.id, self.dir.display())
    }
}

/// Parse a program's settings table into its typed form, naming the field on error.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    file: &Path,
    field: &str,
) -> Result<T, LabError> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| LabError::Parse {
            file: file.to_path_buf(),
            message: format!("[{field}]: {}", e.to_string().trim_end().replace('\n', " ")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names_file_and_field() {
        let text = "id = \"x\"\ntitle=\"t\"\nsummary=\"s\"\nversion=\"1\"\nkind=\"recipe\"\ncolour=\"red\"\n";
        let err = Lab::parse_manifest(text, Path::new("labs/x/lab.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("labs/x/lab.toml"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn wrong_kind_is_named() {
        let text = "id = \"x\"\ntitle=\"t\"\nsummary=\"s\"\nversion=\"1\"\nkind=\"notebook\"\n";
        let err = Lab::parse_manifest(text, Path::new("lab.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind") || err.contains("notebook"), "{err}");
        assert!(err.contains("recipe"), "expected variants listed: {err}");
    }

    #[test]
    fn safe_relative_paths() {
        assert!(is_safe_relative("data/train.idx3"));
        assert!(!is_safe_relative("../secret"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("data/../../x"));
        assert!(!is_safe_relative(""));
    }

    #[test]
    fn points_are_linear_and_clamped() {
        let g = Grading {
            metric: "accuracy".into(),
            direction: Direction::Higher,
            baseline: 0.2,
            target: 0.8,
            points: 100.0,
            split: "test".into(),
            public_fraction: 0.5,
            feedback: vec![],
            hints: vec![],
        };
        assert_eq!(g.points_for(0.1), 0.0);
        assert!((g.points_for(0.5) - 50.0).abs() < 1e-9);
        assert_eq!(g.points_for(0.95), 100.0);
        assert_eq!(g.points_for(f64::NAN), 0.0);
        let lower = Grading {
            direction: Direction::Lower,
            baseline: 8.0,
            target: 2.0,
            ..g
        };
        assert!((lower.points_for(5.0) - 50.0).abs() < 1e-9);
        assert_eq!(lower.points_for(1.0), 100.0);
    }
}
