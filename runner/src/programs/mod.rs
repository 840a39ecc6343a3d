//! Training programs.
//!
//! A program is a model family plus its training loop and its metric. Labs
//! name one in `[program] name`. To add a program (BERT sentence classifier,
//! byte-level GPT, …), implement [`Program`] and list it in
//! [`program_by_name`]; the grader, `lab check` and `lab run` then work
//! unchanged.
//!
//! Trust boundary: [`Program::train`] runs in the (sandboxed) child and only
//! reads public splits via [`Lab::public_file`]; [`Program::evaluate`] with a
//! hidden split runs only in the trusted grader.

mod fit;
pub mod idx;
pub mod image;
pub mod lm;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::grade::checkpoint::TensorSpec;
use crate::lab::{Grading, Lab, LabError};
use crate::recipe::Recipe;
use crate::train::events::{Event, VecSink};
use crate::train::{CurveSummary, EventSink, RunOptions, TrainConfig, TrainError};

/// Names of the programs this runner knows.
pub const PROGRAM_NAMES: &[&str] = &[image::NAME, lm::NAME, text::NAME];

/// Errors of a program run or evaluation (infrastructure or configuration,
/// never the student's fault once the recipe has been validated).
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("data file {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("unknown program `{0}`")]
    Unknown(String),
    #[error("{0}")]
    Other(String),
}

/// The score of one evaluated example. The split's metric is
/// `Σ numerator / Σ denominator` (accuracy: correct/1; bits per byte:
/// bits/bytes), so any subset (public, private, one class) can be scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExampleScore {
    pub numerator: f64,
    pub denominator: f64,
    /// True class (classification programs).
    pub label: Option<usize>,
    /// Predicted class (classification programs).
    pub predicted: Option<usize>,
}

/// The per-example scores of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub examples: Vec<ExampleScore>,
    /// Class names, for per-class feedback (classification programs).
    pub class_names: Option<Vec<String>>,
}

impl Evaluation {
    /// The metric over the examples selected by `keep`.
    pub fn metric_where(&self, keep: impl Fn(usize) -> bool) -> Option<f64> {
        let (mut n, mut d) = (0.0, 0.0);
        for (i, e) in self.examples.iter().enumerate() {
            if keep(i) {
                n += e.numerator;
                d += e.denominator;
            }
        }
        (d > 0.0).then_some(n / d)
    }

    pub fn metric(&self) -> Option<f64> {
        self.metric_where(|_| true)
    }
}

/// The result of a training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    pub steps: u64,
    /// Validation metric of the weights written (if evaluated).
    pub valid_metric: Option<f64>,
    pub curve: CurveSummary,
    pub config: TrainConfig,
}

/// What `build-base` produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseReport {
    pub checkpoint: PathBuf,
    pub bytes: u64,
    /// Metric of the base model on its own validation split.
    pub valid_metric: f64,
    pub steps: u64,
}

/// A training program.
pub trait Program: Send + Sync {
    /// The name labs use in `[program] name`.
    fn name(&self) -> &'static str;
    /// The metric it computes (labs must grade on it).
    fn metric_name(&self) -> &'static str;
    /// Standard recipe parameters it understands.
    fn supported_params(&self) -> &'static [&'static str];
    /// Check `[program.settings]`, `[base.build]` and the data roles it needs.
    fn check_lab(&self, lab: &Lab) -> Result<(), LabError>;
    /// Which model variant this installation trains, when a program has
    /// more than one (a shared pretrained encoder, named by its folder);
    /// `None` for the lab's own base. `lab check` then prefers
    /// `starter/recipe.<variant>.toml` and `solution/recipe.<variant>.toml`.
    fn variant(&self, _lab: &Lab) -> Option<String> {
        None
    }
    /// The rubric in force. Labs grade by `[grading]`; a program whose
    /// model depends on what is installed (a shared pretrained encoder or the
    /// lab's own) may move the baseline and target with it.
    fn grading(&self, lab: &Lab) -> Result<Grading, ProgramError> {
        Ok(lab.manifest.grading.clone())
    }
    /// The tensors a submission checkpoint must contain (the reference architecture).
    fn checkpoint_spec(&self, lab: &Lab) -> Result<Vec<TensorSpec>, ProgramError>;
    /// Build the base checkpoint from shipped data with the lab's seed.
    fn build_base(
        &self,
        lab: &Lab,
        opts: &RunOptions,
        sink: &mut dyn EventSink,
    ) -> Result<BaseReport, ProgramError>;
    /// The weights a run starts from (base plus a fresh head, seeded): graded
    /// as "before fine-tuning".
    fn initial_weights(
        &self,
        lab: &Lab,
        seed: u64,
    ) -> Result<HashMap<String, Tensor>, ProgramError>;
    /// Train with a config and write the checkpoint into `out_dir`. Reads only public splits.
    fn train(
        &self,
        lab: &Lab,
        config: &TrainConfig,
        out_dir: &Path,
        opts: &RunOptions,
        sink: &mut dyn EventSink,
    ) -> Result<RunOutcome, ProgramError>;
    /// Per-example scores of `weights` on a split (`hidden` = the grader's split).
    fn evaluate(
        &self,
        lab: &Lab,
        weights: &HashMap<String, Tensor>,
        split: &str,
        hidden: bool,
    ) -> Result<Evaluation, ProgramError>;
}

/// Everything a run reported, for the curve summary of its outcome.
pub(crate) struct RunRecord {
    pub events: VecSink,
    pub started: std::time::Instant,
}

impl RunRecord {
    pub fn start() -> Self {
        Self {
            events: VecSink::default(),
            started: std::time::Instant::now(),
        }
    }
}

/// The end of every training run: write `weights` to
/// `out_dir/model.safetensors`, report `extra` events, then `checkpoint` and
/// `finished`, to the caller's sink and the record, and summarise the curve
/// by `metric`.
pub(crate) fn finish_run(
    out_dir: &Path,
    fitted: fit::Fitted<BTreeMap<String, Tensor>>,
    config: &TrainConfig,
    metric: &str,
    extra: Vec<Event>,
    mut record: RunRecord,
    sink: &mut dyn EventSink,
) -> Result<RunOutcome, ProgramError> {
    let path = out_dir.join("model.safetensors");
    let bytes = crate::train::checkpoint::save_checkpoint(&fitted.weights, &path)?;
    let elapsed_s = record.started.elapsed().as_secs_f64();
    let end = [
        Event::Checkpoint {
            path: "model.safetensors".into(),
            bytes,
        },
        Event::Finished {
            steps: fitted.steps,
            elapsed_s,
        },
    ];
    for e in extra.into_iter().chain(end) {
        record.events.emit(e.clone());
        sink.emit(e);
    }
    Ok(RunOutcome {
        checkpoint: path,
        steps: fitted.steps,
        valid_metric: fitted.valid_metric,
        curve: CurveSummary::from_events(&record.events.events, metric),
        config: config.clone(),
    })
}

/// Look a program up by name.
pub fn program_by_name(name: &str) -> Result<Box<dyn Program>, ProgramError> {
    match name {
        image::NAME => Ok(Box::new(image::ImageClassifier)),
        lm::NAME => Ok(Box::new(lm::ByteGpt)),
        text::NAME => Ok(Box::new(text::SentenceClassifier)),
        other => Err(ProgramError::Unknown(other.to_string())),
    }
}

/// The program of a lab.
pub fn program_for(lab: &Lab) -> Result<Box<dyn Program>, ProgramError> {
    program_by_name(&lab.manifest.program.name)
}

/// Run a lab's program on a validated recipe, writing into `out_dir`.
/// This is what a sandboxed child process calls, with a JSON-lines sink on stdout.
pub fn run_program(
    lab: &Lab,
    recipe: &Recipe,
    out_dir: &Path,
    opts: &RunOptions,
    sink: &mut dyn EventSink,
) -> Result<RunOutcome, ProgramError> {
    let program = program_for(lab)?;
    let config = TrainConfig::from_recipe(recipe);
    tracing::info!(lab = %lab.id(), program = program.name(), seed = config.seed, "training");
    program.train(lab, &config, out_dir, opts, sink)
}
