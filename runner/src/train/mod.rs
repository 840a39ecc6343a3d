//! Shared training machinery for the programs.
//!
//! - [`TrainConfig`]: the typed hyperparameters, built from a validated recipe.
//! - [`Optimizer`]: AdamW over a chosen set of `Var`s (decoupled weight decay
//!   on weights, none on biases), global-norm gradient clipping, and the
//!   learning-rate [`Schedule`] with warmup.
//! - [`EarlyStopping`] on the validation metric.
//! - [`BatchSampler`]: seeded shuffles, so a run is deterministic for its seed.
//! - [`events`]: the JSON-lines events and their sinks.
//! - [`checkpoint`]: safetensors writing.
//! - [`device`]: the device a run trains on (`SANHAK_DEVICE`).

pub mod checkpoint;
pub mod device;
pub mod events;

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};
use candle_nn::Optimizer as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::lab::Direction;
use crate::recipe::Recipe;
pub use device::TrainDevice;
pub use events::{Event, EventSink};

/// Errors of the training machinery.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Steps(u64),
    Epochs(u64),
}

/// LoRA settings of a run (for programs that support adapters).
pub use crate::nn::lora::LoraConfig;

/// Typed hyperparameters of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub budget: Budget,
    pub batch_size: usize,
    pub weight_decay: f64,
    /// `None` = no clipping.
    pub grad_clip: Option<f64>,
    pub seed: u64,
    pub frozen: Vec<String>,
    pub lora: Option<LoraConfig>,
    pub dropout: f64,
    /// Evaluations without improvement before stopping; `None` = off.
    pub early_stopping_patience: Option<u64>,
    pub eval_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            budget: Budget::Steps(100),
            batch_size: 32,
            weight_decay: 0.0,
            grad_clip: None,
            seed: 0,
            frozen: Vec::new(),
            lora: None,
            dropout: 0.0,
            early_stopping_patience: None,
            eval_every: 50,
        }
    }
}

impl TrainConfig {
    /// Build from a validated recipe; parameters the lab did not declare keep
    /// the defaults.
    pub fn from_recipe(recipe: &Recipe) -> TrainConfig {
        let mut c = TrainConfig::default();
        let nonneg = |i: i64| u64::try_from(i).unwrap_or(0);
        if let Some(x) = recipe.float("learning_rate") {
            c.learning_rate = x;
        }
        c.schedule = match recipe.choice("schedule") {
            Some("linear") => ScheduleKind::Linear,
            Some("cosine") => ScheduleKind::Cosine,
            _ => ScheduleKind::Constant,
        };
        if let Some(w) = recipe.int("warmup_steps") {
            c.warmup_steps = nonneg(w);
        }
        if let Some(s) = recipe.int("steps") {
            c.budget = Budget::Steps(nonneg(s).max(1));
        } else if let Some(e) = recipe.int("epochs") {
            c.budget = Budget::Epochs(nonneg(e).max(1));
        }
        if let Some(b) = recipe.int("batch_size") {
            c.batch_size = usize::try_from(b).unwrap_or(1).max(1);
        }
        if let Some(x) = recipe.float("weight_decay") {
            c.weight_decay = x;
        }
        c.grad_clip = recipe.float("grad_clip").filter(|x| *x > 0.0);
        if let Some(s) = recipe.int("seed") {
            c.seed = nonneg(s);
        }
        if let Some(f) = recipe.multi("frozen") {
            c.frozen = f.to_vec();
        }
        if let Some(r) = recipe.int("lora_rank").filter(|r| *r > 0) {
            c.lora = Some(LoraConfig {
                rank: usize::try_from(r).unwrap_or(1),
                alpha: recipe.float("lora_alpha").unwrap_or(r as f64),
                targets: recipe
                    .multi("lora_targets")
                    .map(<[String]>::to_vec)
                    .unwrap_or_default(),
            });
        }
        if let Some(x) = recipe.float("dropout") {
            c.dropout = x;
        }
        c.early_stopping_patience = recipe
            .int("early_stopping_patience")
            .filter(|p| *p > 0)
            .map(nonneg);
        if let Some(e) = recipe.int("eval_every") {
            c.eval_every = nonneg(e).max(1);
        }
        c
    }

    /// Total optimizer steps for a training split of `n_train` examples,
    /// scaled by `step_scale` (quick runs) and never below 1.
    pub fn total_steps(&self, n_train: usize, step_scale: f64) -> u64 {
        let full = match self.budget {
            Budget::Steps(s) => s,
            Budget::Epochs(e) => e * (n_train.div_ceil(self.batch_size.max(1)) as u64),
        };
        scale_steps(full, step_scale)
    }
}

/// Scale a step count (quick mode), keeping at least one step.
pub fn scale_steps(steps: u64, scale: f64) -> u64 {
    if (scale - 1.0).abs() < f64::EPSILON || !scale.is_finite() || scale <= 0.0 {
        return steps.max(1);
    }
    ((steps as f64 * scale).round() as u64).max(1)
}

/// Options of a run that are not part of the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Multiplies steps, warmup and evaluation intervals (1.0 = full run).
    pub step_scale: f64,
    /// Where training runs (evaluation by the grader is always on the CPU).
    #[serde(default)]
    pub device: TrainDevice,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            step_scale: 1.0,
            device: TrainDevice::Cpu,
        }
    }
}

impl RunOptions {
    /// These options with step counts scaled by `step_scale`, on the CPU.
    pub fn scaled(step_scale: f64) -> Self {
        Self {
            step_scale,
            ..Self::default()
        }
    }
}

/// Learning rate as a function of the step (1-based): linear warmup from 0,
/// then constant, linear decay to 0 or cosine decay to 0 at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup > 0 && step <= self.warmup {
            return self.peak * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step.saturating_sub(self.warmup)) as f64 / span).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => self.peak * (1.0 - progress),
            ScheduleKind::Cosine => {
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// AdamW over a chosen set of `Var`s, with gradient clipping and a schedule.
/// Vars of rank ≥ 2 get weight decay; biases and norms (rank 1) do not.
pub struct Optimizer {
    decay: candle_nn::AdamW,
    no_decay: candle_nn::AdamW,
    vars: Vec<Var>,
    schedule: Schedule,
    clip: Option<f64>,
    step: u64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub step: u64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Optimizer {
    pub fn new(
        vars: Vec<Var>,
        weight_decay: f64,
        schedule: Schedule,
        clip: Option<f64>,
    ) -> Result<Self, TrainError> {
        let (w, b): (Vec<Var>, Vec<Var>) = vars.iter().cloned().partition(|v| v.rank() >= 2);
        let params = |wd: f64| candle_nn::ParamsAdamW {
            lr: schedule.lr_at(1),
            weight_decay: wd,
            ..Default::default()
        };
        Ok(Self {
            decay: candle_nn::AdamW::new(w, params(weight_decay))?,
            no_decay: candle_nn::AdamW::new(b, params(0.0))?,
            vars,
            schedule,
            clip,
            step: 0,
        })
    }

    /// Backpropagate `loss`, clip, and update the vars.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<StepStats, TrainError> {
        let mut grads = loss.backward()?;
        self.apply(&mut grads)
    }

    /// Clip and apply precomputed gradients.
    pub fn apply(&mut self, grads: &mut GradStore) -> Result<StepStats, TrainError> {
        self.step += 1;
        let grad_norm = global_grad_norm(&self.vars, grads)?;
        if let Some(max) = self.clip {
            if grad_norm.is_finite() && grad_norm > max {
                let scale = max / (grad_norm + 1e-6);
                for v in &self.vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        grads.insert(v.as_tensor(), (g * scale)?);
                    }
                }
            }
        }
        let lr = self.schedule.lr_at(self.step);
        self.decay.set_learning_rate(lr);
        self.no_decay.set_learning_rate(lr);
        self.decay.step(grads)?;
        self.no_decay.step(grads)?;
        Ok(StepStats {
            step: self.step,
            lr,
            grad_norm,
        })
    }

    /// The learning rate the schedule gives at `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        self.schedule.lr_at(step)
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }
}

/// The L2 norm of all gradients of `vars` together.
pub fn global_grad_norm(vars: &[Var], grads: &GradStore) -> Result<f64, TrainError> {
    let mut sum = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}

/// Early stopping on an evaluation metric.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    patience: Option<u64>,
    direction: Direction,
    best: Option<(u64, f64)>,
    bad: u64,
}

/// What an evaluation means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalVerdict {
    /// A new best: keep these weights.
    Improved,
    NoImprovement,
    /// Patience is used up: stop.
    Stop,
}

impl EarlyStopping {
    pub fn new(patience: Option<u64>, direction: Direction) -> Self {
        Self {
            patience,
            direction,
            best: None,
            bad: 0,
        }
    }

    pub fn observe(&mut self, step: u64, metric: f64) -> EvalVerdict {
        let better = match self.best {
            None => metric.is_finite(),
            Some((_, b)) => match self.direction {
                Direction::Higher => metric > b,
                Direction::Lower => metric < b,
            },
        };
        if better {
            self.best = Some((step, metric));
            self.bad = 0;
            return EvalVerdict::Improved;
        }
        self.bad += 1;
        match self.patience {
            Some(p) if self.bad >= p => EvalVerdict::Stop,
            _ => EvalVerdict::NoImprovement,
        }
    }

    /// (step, metric) of the best evaluation so far.
    pub fn best(&self) -> Option<(u64, f64)> {
        self.best
    }

    pub fn enabled(&self) -> bool {
        self.patience.is_some()
    }
}

/// Seeded mini-batches: a fresh permutation each epoch.
#[derive(Debug)]
pub struct BatchSampler {
    n: usize,
    batch: usize,
    order: Vec<usize>,
    pos: usize,
    rng: StdRng,
}

impl BatchSampler {
    pub fn new(n: usize, batch: usize, seed: u64) -> Self {
        let mut s = Self {
            n,
            batch: batch.clamp(1, n.max(1)),
            order: (0..n).collect(),
            pos: 0,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_ba7c),
        };
        s.order.shuffle(&mut s.rng);
        s
    }

    /// The next batch of indices (never empty when n > 0).
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.pos + self.batch > self.n {
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        let b = self.order[self.pos..(self.pos + self.batch).min(self.n)].to_vec();
        self.pos += self.batch;
        b
    }
}

/// A summary of a training curve, for feedback.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurveSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub min_loss: Option<f64>,
    /// Loss became NaN or infinite.
    pub diverged: bool,
    /// (step, validation metric) of each evaluation.
    pub evals: Vec<(u64, f64)>,
    pub early_stopped_at: Option<u64>,
    pub elapsed_s: f64,
}

impl CurveSummary {
    /// Summarise a stream of events; `metric` names the eval metric to track.
    pub fn from_events(events: &[Event], metric: &str) -> CurveSummary {
        let mut s = CurveSummary::default();
        let mut window: Vec<f64> = Vec::new();
        for e in events {
            match e {
                Event::Step {
                    step,
                    loss,
                    elapsed_s,
                    ..
                } => {
                    s.steps = *step;
                    s.elapsed_s = *elapsed_s;
                    if !loss.is_finite() {
                        s.diverged = true;
                        continue;
                    }
                    if s.first_loss.is_none() {
                        s.first_loss = Some(*loss);
                    }
                    window.push(*loss);
                    if window.len() > 20 {
                        window.remove(0);
                    }
                    s.min_loss = Some(s.min_loss.map_or(*loss, |m: f64| m.min(*loss)));
                }
                Event::Eval { step, metrics, .. } => {
                    if let Some(m) = metrics.get(metric) {
                        s.evals.push((*step, *m));
                    }
                }
                Event::EarlyStop { step, .. } => s.early_stopped_at = Some(*step),
                Event::Finished { elapsed_s, .. } => s.elapsed_s = *elapsed_s,
                _ => {}
            }
        }
        if !window.is_empty() {
            s.final_loss = Some(window.iter().sum::<f64>() / window.len() as f64);
        }
        s
    }
}

/// A metric map with one entry, for [`Event::Eval`].
pub fn metrics1(name: &str, value: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([(name.to_string(), value)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_warm_up_and_decay() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            peak: 1.0,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr_at(5) - 0.5).abs() < 1e-12);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(60) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(110).abs() < 1e-12);
        let l = Schedule {
            kind: ScheduleKind::Linear,
            ..s
        };
        assert!((l.lr_at(60) - 0.5).abs() < 1e-12);
        let c = Schedule {
            kind: ScheduleKind::Constant,
            ..s
        };
        assert_eq!(c.lr_at(100), 1.0);
    }

    #[test]
    fn clipping_bounds_the_update() -> Result<(), TrainError> {
        // One var, loss = 1000 * sum(w): gradient norm is 1000*sqrt(4) = 2000.
        let w = Var::from_vec(vec![0f32; 4], (2, 2), &Device::Cpu)?;
        let sched = Schedule {
            kind: ScheduleKind::Constant,
            peak: 0.1,
            warmup: 0,
            total: 1,
        };
        let mut opt = Optimizer::new(vec![w.clone()], 0.0, sched, Some(1.0))?;
        let loss = (w.as_tensor().sum_all()? * 1000.0)?;
        let stats = opt.backward_step(&loss)?;
        assert!((stats.grad_norm - 2000.0).abs() < 1e-3, "{stats:?}");
        // Adam's first step moves each weight by ~lr whatever the scale.
        let after = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert!(after.iter().all(|x| (x + 0.1).abs() < 1e-3), "{after:?}");
        Ok(())
    }

    #[test]
    fn weight_decay_skips_biases() -> Result<(), TrainError> {
        let w = Var::from_vec(vec![1f32; 4], (2, 2), &Device::Cpu)?;
        let b = Var::from_vec(vec![1f32; 2], 2, &Device::Cpu)?;
        let sched = Schedule {
            kind: ScheduleKind::Constant,
            peak: 0.1,
            warmup: 0,
            total: 1,
        };
        let mut opt = Optimizer::new(vec![w.clone(), b.clone()], 0.5, sched, None)?;
        // Vanishing gradients: Adam's step is ~1e-12, so only decay moves anything.
        let loss = ((w.as_tensor().sum_all()? + b.as_tensor().sum_all()?)? * 1e-20)?;
        opt.backward_step(&loss)?;
        let wv = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let bv = b.as_tensor().to_vec1::<f32>()?;
        assert!((wv[0] - 0.95).abs() < 1e-6, "{wv:?}");
        assert!((bv[0] - 1.0).abs() < 1e-6, "{bv:?}");
        Ok(())
    }

    #[test]
    fn early_stopping_counts_patience() {
        let mut e = EarlyStopping::new(Some(2), Direction::Higher);
        assert_eq!(e.observe(1, 0.5), EvalVerdict::Improved);
        assert_eq!(e.observe(2, 0.4), EvalVerdict::NoImprovement);
        assert_eq!(e.observe(3, 0.6), EvalVerdict::Improved);
        assert_eq!(e.observe(4, 0.6), EvalVerdict::NoImprovement);
        assert_eq!(e.observe(5, 0.1), EvalVerdict::Stop);
        assert_eq!(e.best(), Some((3, 0.6)));
    }

    #[test]
    fn sampler_is_seeded_and_covers_each_epoch() {
        let mut a = BatchSampler::new(10, 5, 3);
        let mut b = BatchSampler::new(10, 5, 3);
        let ea: Vec<_> = (0..4).map(|_| a.next_batch()).collect();
        let eb: Vec<_> = (0..4).map(|_| b.next_batch()).collect();
        assert_eq!(ea, eb);
        let mut first: Vec<usize> = ea[0].iter().chain(ea[1].iter()).copied().collect();
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        let mut c = BatchSampler::new(10, 5, 4);
        assert_ne!(
            (0..2).map(|_| c.next_batch()).collect::<Vec<_>>(),
            ea[..2].to_vec()
        );
    }

    #[test]
    fn scale_steps_keeps_one() {
        assert_eq!(scale_steps(100, 1.0), 100);
        assert_eq!(scale_steps(100, 0.1), 10);
        assert_eq!(scale_steps(3, 0.01), 1);
    }
}
