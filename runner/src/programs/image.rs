//! Program `image-classifier`: a small CNN on 28×28 grey images.
//!
//! Architecture (fixed by `[program.settings]`):
//! `conv1` 3×3 (1→c1) + ReLU + 2×2 max-pool → `conv2` 3×3 (c1→c2) + ReLU +
//! 2×2 max-pool → flatten (c2·7·7) → `fc` (→ hidden) + ReLU + dropout → `head`
//! (→ classes). Layer groups `conv1`, `conv2`, `fc` can be frozen; `head` is
//! always trained. Transfer: the base is trained on the base classes; a
//! fine-tuning run starts from the base's conv1/conv2/fc and a fresh head.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::fit::{self, fit, Trainee};
use super::{
    finish_run, BaseReport, Evaluation, ExampleScore, Program, ProgramError, RunOutcome, RunRecord,
};
use crate::grade::checkpoint::{load_checked, TensorSpec};
use crate::lab::{parse_settings, Direction, Lab, LabError};
use crate::train::checkpoint::save_checkpoint;
use crate::train::events::{Event, EventSink, TeeSink};
use crate::train::{scale_steps, BatchSampler, Optimizer, RunOptions, Schedule, TrainConfig};

pub const NAME: &str = "image-classifier";
const METRIC: &str = "accuracy";
const SIDE: usize = 28;
/// Fashion-MNIST pixel mean and standard deviation (of /255 values).
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;
/// Groups a recipe may freeze.
pub const FREEZABLE: &[&str] = &["conv1", "conv2", "fc"];

const SUPPORTED: &[&str] = &[
    "learning_rate",
    "schedule",
    "warmup_steps",
    "steps",
    "epochs",
    "batch_size",
    "weight_decay",
    "grad_clip",
    "seed",
    "frozen",
    "dropout",
    "early_stopping_patience",
    "eval_every",
];

/// `[program.settings]` of an image-classifier lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Output channels of conv1 and conv2.
    pub channels: [usize; 2],
    /// Width of the fc layer.
    pub hidden: usize,
    /// Names of the fine-tuning classes.
    pub classes: Vec<String>,
    /// Dataset label of the first fine-tuning class (labels offset..offset+n).
    pub label_offset: u8,
    /// Public split used for training.
    pub train_split: String,
    /// Public split used for validation / early stopping.
    pub valid_split: String,
}

/// `[base.build]` of an image-classifier lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseBuild {
    pub classes: Vec<String>,
    pub label_offset: u8,
    pub train_split: String,
    pub valid_split: String,
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
}

/// The image-classifier program.
pub struct ImageClassifier;

/// A labelled image set in memory.
pub struct ImageSet {
    /// `[n, 1, 28, 28]`, normalised.
    pub images: Tensor,
    /// `[n]`, class indices.
    pub labels: Tensor,
    pub label_vec: Vec<usize>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.label_vec.len()
    }
    pub fn is_empty(&self) -> bool {
        self.label_vec.is_empty()
    }

    /// This set with its tensors on `dev` (for training there).
    pub fn to_device(self, dev: &Device) -> Result<Self, candle_core::Error> {
        Ok(Self {
            images: self.images.to_device(dev)?,
            labels: self.labels.to_device(dev)?,
            label_vec: self.label_vec,
        })
    }
}

fn settings(lab: &Lab) -> Result<Settings, LabError> {
    let file = lab.manifest_path();
    let s: Settings = parse_settings(&lab.manifest.program.settings, &file, "program.settings")?;
    if s.channels.contains(&0) || s.channels.iter().any(|c| *c > 256) {
        return Err(LabError::invalid(
            &file,
            "program.settings.channels",
            "two channel counts between 1 and 256",
        ));
    }
    if s.hidden == 0 || s.hidden > 4096 {
        return Err(LabError::invalid(
            &file,
            "program.settings.hidden",
            "a width between 1 and 4096",
        ));
    }
    if s.classes.len() < 2 || s.label_offset as usize + s.classes.len() > 256 {
        return Err(LabError::invalid(
            &file,
            "program.settings.classes",
            "at least two classes within byte labels",
        ));
    }
    Ok(s)
}

fn base_build(lab: &Lab) -> Result<(BaseBuild, u64), LabError> {
    let file = lab.manifest_path();
    let base = lab.manifest.base.as_ref().ok_or_else(|| {
        LabError::invalid(
            &file,
            "base",
            "a [base] table (image-classifier labs transfer from a base)",
        )
    })?;
    let b: BaseBuild = parse_settings(&base.build, &file, "base.build")?;
    if b.classes.len() < 2 || b.label_offset as usize + b.classes.len() > 256 {
        return Err(LabError::invalid(
            &file,
            "base.build.classes",
            "at least two classes within byte labels",
        ));
    }
    if b.steps == 0 || b.batch_size == 0 || !(b.learning_rate > 0.0 && b.learning_rate.is_finite())
    {
        return Err(LabError::invalid(
            &file,
            "base.build",
            "positive steps, batch_size and learning_rate",
        ));
    }
    Ok((b, base.seed))
}

/// Tensor shapes of the model for `classes` outputs.
pub fn model_spec(s: &Settings, classes: usize) -> Vec<TensorSpec> {
    let [c1, c2] = s.channels;
    vec![
        TensorSpec::f32("conv1.weight", &[c1, 1, 3, 3]),
        TensorSpec::f32("conv1.bias", &[c1]),
        TensorSpec::f32("conv2.weight", &[c2, c1, 3, 3]),
        TensorSpec::f32("conv2.bias", &[c2]),
        TensorSpec::f32("fc.weight", &[s.hidden, c2 * 7 * 7]),
        TensorSpec::f32("fc.bias", &[s.hidden]),
        TensorSpec::f32("head.weight", &[classes, s.hidden]),
        TensorSpec::f32("head.bias", &[classes]),
    ]
}

/// PyTorch-style default initialisation: U(-1/√fan_in, 1/√fan_in) for
/// weights and biases, drawn from `rng` (deterministic for a seed).
pub fn init_tensor(
    spec: &TensorSpec,
    fan_in: usize,
    rng: &mut StdRng,
) -> Result<Tensor, candle_core::Error> {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    let n: usize = spec.shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
    Tensor::from_vec(v, spec.shape.as_slice(), &Device::Cpu)
}

fn fan_in(s: &Settings, group: &str) -> usize {
    match group {
        "conv1" => 9,
        "conv2" => s.channels[0] * 9,
        "fc" => s.channels[1] * 49,
        _ => s.hidden,
    }
}

/// Freshly initialised weights of every tensor (seeded).
pub fn init_weights(
    s: &Settings,
    classes: usize,
    seed: u64,
) -> Result<BTreeMap<String, Tensor>, candle_core::Error> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for spec in model_spec(s, classes) {
        let group = spec.name.split('.').next().unwrap_or_default().to_string();
        out.insert(
            spec.name.clone(),
            init_tensor(&spec, fan_in(s, &group), &mut rng)?,
        );
    }
    Ok(out)
}

/// Dropout with a mask drawn from `rng` (candle's own dropout is not seeded).
fn dropout(x: &Tensor, p: f64, rng: &mut StdRng) -> Result<Tensor, candle_core::Error> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let n = x.elem_count();
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            if rng.gen::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// 2×2 max pooling with stride 2, as a reshape and two `max` reductions.
///
/// candle 0.11's `max_pool2d` backward multiplies the gradient by
/// (number of maxima in the window) / (window area) instead of dividing by the
/// number of maxima, so a unique maximum gets 1/4 of its gradient (measured by
/// the finite-difference test below). The `max` reduction's backward is exact.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor, candle_core::Error> {
    let (b, c, h, w) = x.dims4()?;
    x.contiguous()?
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .max(5)?
        .max(3)
}

/// The forward pass: logits `[batch, classes]`. Weights are looked up by name,
/// so trainable (`Var`) and frozen (plain) tensors mix freely.
pub fn forward(
    w: &BTreeMap<String, Tensor>,
    x: &Tensor,
    dropout_rng: Option<(f64, &mut StdRng)>,
) -> Result<Tensor, candle_core::Error> {
    let get = |k: &str| {
        w.get(k)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing weight {k}")))
    };
    let x = x.to_dtype(get("conv1.weight")?.dtype())?;
    let conv = |x: &Tensor, name: &str| -> Result<Tensor, candle_core::Error> {
        let wt = get(&format!("{name}.weight"))?;
        let b = get(&format!("{name}.bias"))?;
        let c = b.dim(0)?;
        let y = x
            .conv2d(wt, 1, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?
            .relu()?;
        max_pool_2x2(&y)
    };
    let h = conv(&x, "conv1")?;
    let h = conv(&h, "conv2")?;
    let h = h.flatten_from(1)?;
    let h = h
        .matmul(&get("fc.weight")?.t()?)?
        .broadcast_add(get("fc.bias")?)?
        .relu()?;
    let h = match dropout_rng {
        Some((p, rng)) => dropout(&h, p, rng)?,
        None => h,
    };
    h.matmul(&get("head.weight")?.t()?)?
        .broadcast_add(get("head.bias")?)
}

/// Load an image split, keeping labels offset..offset+classes (mapped to 0..).
pub fn load_set(
    images: &Path,
    labels: &Path,
    offset: u8,
    classes: usize,
) -> Result<ImageSet, ProgramError> {
    let xi = super::idx::read_idx_u8(images)?;
    let yi = super::idx::read_idx_u8(labels)?;
    if xi.dims.len() != 3 || xi.dims[1] != SIDE || xi.dims[2] != SIDE {
        return Err(ProgramError::Data {
            path: images.to_path_buf(),
            message: format!("expected n×28×28 images, found {:?}", xi.dims),
        });
    }
    if yi.dims.len() != 1 || yi.dims[0] != xi.dims[0] {
        return Err(ProgramError::Data {
            path: labels.to_path_buf(),
            message: format!("expected {} labels, found dims {:?}", xi.dims[0], yi.dims),
        });
    }
    let px = SIDE * SIDE;
    let mut pixels = Vec::new();
    let mut label_vec = Vec::new();
    for (i, &y) in yi.data.iter().enumerate() {
        if y < offset || (y - offset) as usize >= classes {
            continue;
        }
        label_vec.push((y - offset) as usize);
        pixels.extend(
            xi.data[i * px..(i + 1) * px]
                .iter()
                .map(|&p| (p as f32 / 255.0 - MEAN) / STD),
        );
    }
    if label_vec.is_empty() {
        return Err(ProgramError::Data {
            path: labels.to_path_buf(),
            message: "no example of the configured classes".into(),
        });
    }
    let n = label_vec.len();
    let images = Tensor::from_vec(pixels, (n, 1, SIDE, SIDE), &Device::Cpu)?;
    let labels = Tensor::from_vec(
        label_vec.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    Ok(ImageSet {
        images,
        labels,
        label_vec,
    })
}

/// Predictions of `w` on a set, in batches.
pub fn predict(
    w: &BTreeMap<String, Tensor>,
    set: &ImageSet,
) -> Result<Vec<usize>, candle_core::Error> {
    let mut preds = Vec::with_capacity(set.len());
    let n = set.len();
    let mut start = 0;
    while start < n {
        let len = (n - start).min(500);
        let logits = forward(w, &set.images.narrow(0, start, len)?, None)?;
        preds.extend(
            logits
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|p| p as usize),
        );
        start += len;
    }
    Ok(preds)
}

fn accuracy(w: &BTreeMap<String, Tensor>, set: &ImageSet) -> Result<f64, candle_core::Error> {
    let p = predict(w, set)?;
    let correct = p.iter().zip(&set.label_vec).filter(|(a, b)| a == b).count();
    Ok(correct as f64 / set.len().max(1) as f64)
}

/// What [`fit_image`] returns: the weights to save, their validation accuracy and the steps run.
struct FitResult {
    weights: BTreeMap<String, Tensor>,
    valid_metric: Option<f64>,
    steps: u64,
}

/// Settings of one call of [`fit_image`].
struct FitPlan<'a> {
    total_steps: u64,
    warmup: u64,
    eval_every: u64,
    config: &'a TrainConfig,
    /// Where to train (the sets must already be there).
    device: Device,
}

/// The CNN in training: trainable and frozen tensors by name.
struct CnnTrainee<'a> {
    weights: BTreeMap<String, Tensor>,
    train: &'a ImageSet,
    valid: &'a ImageSet,
    sampler: BatchSampler,
    dropout: f64,
    rng: StdRng,
}

impl Trainee for CnnTrainee<'_> {
    type Snapshot = BTreeMap<String, Tensor>;

    fn batch_loss(&mut self) -> Result<Tensor, ProgramError> {
        let idx = self.sampler.next_batch();
        let idx_t = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            self.train.images.device(),
        )?;
        let x = self.train.images.index_select(&idx_t, 0)?;
        let y = self.train.labels.index_select(&idx_t, 0)?;
        let logits = forward(&self.weights, &x, Some((self.dropout, &mut self.rng)))?;
        Ok(candle_nn::loss::cross_entropy(&logits, &y)?)
    }

    fn validate(&mut self) -> Result<f64, ProgramError> {
        Ok(accuracy(&self.weights, self.valid)?)
    }

    fn snapshot(&self) -> Result<Self::Snapshot, ProgramError> {
        let mut snap = BTreeMap::new();
        for (k, t) in &self.weights {
            snap.insert(k.clone(), t.copy()?);
        }
        Ok(snap)
    }
}

/// Fine-tuning and base building: trains the groups the config does not
/// freeze. Returns the weights to save (the best evaluated ones when early
/// stopping is on), their validation accuracy and the steps run.
fn fit_image(
    start: BTreeMap<String, Tensor>,
    train: &ImageSet,
    valid: &ImageSet,
    plan: &FitPlan<'_>,
    sink: &mut dyn EventSink,
) -> Result<FitResult, ProgramError> {
    let cfg = plan.config;
    let mut weights = BTreeMap::new();
    let mut vars = Vec::new();
    for (name, t) in start {
        let t = t.to_device(&plan.device)?;
        let group = name.split('.').next().unwrap_or_default();
        if cfg.frozen.iter().any(|f| f == group) {
            weights.insert(name, t);
        } else {
            let v = Var::from_tensor(&t)?;
            weights.insert(name, v.as_tensor().clone());
            vars.push(v);
        }
    }
    let schedule = Schedule {
        kind: cfg.schedule,
        peak: cfg.learning_rate,
        warmup: plan.warmup.min(plan.total_steps),
        total: plan.total_steps,
    };
    let mut opt = Optimizer::new(vars, cfg.weight_decay, schedule, cfg.grad_clip)?;
    let mut trainee = CnnTrainee {
        weights,
        train,
        valid,
        sampler: BatchSampler::new(train.len(), cfg.batch_size, cfg.seed),
        dropout: cfg.dropout,
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x0d20_f0a7),
    };
    let fitted = fit(
        &mut trainee,
        &mut opt,
        &fit::FitPlan {
            program: NAME,
            metric: METRIC,
            direction: Direction::Higher,
            total_steps: plan.total_steps,
            eval_every: plan.eval_every,
            patience: cfg.early_stopping_patience,
            seed: cfg.seed,
        },
        sink,
    )?;
    Ok(FitResult {
        weights: fitted.weights,
        valid_metric: fitted.valid_metric,
        steps: fitted.steps,
    })
}

impl ImageClassifier {
    /// The training and validation sets, on `dev`.
    fn sets(
        &self,
        lab: &Lab,
        s: &Settings,
        dev: &Device,
    ) -> Result<(ImageSet, ImageSet), ProgramError> {
        let n = s.classes.len();
        let load = |split: &str| -> Result<ImageSet, ProgramError> {
            Ok(load_set(
                &lab.public_file(split, "images")?,
                &lab.public_file(split, "labels")?,
                s.label_offset,
                n,
            )?
            .to_device(dev)?)
        };
        Ok((load(&s.train_split)?, load(&s.valid_split)?))
    }
}

impl Program for ImageClassifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        METRIC
    }

    fn supported_params(&self) -> &'static [&'static str] {
        SUPPORTED
    }

    fn check_lab(&self, lab: &Lab) -> Result<(), LabError> {
        let s = settings(lab)?;
        let file = lab.manifest_path();
        for split in [&s.train_split, &s.valid_split] {
            lab.public_file(split, "images")?;
            lab.public_file(split, "labels")?;
        }
        let g = &lab.manifest.grading.split;
        lab.hidden_file(g, "images")?;
        lab.hidden_file(g, "labels")?;
        let (b, _) = base_build(lab)?;
        for split in [&b.train_split, &b.valid_split] {
            lab.public_file(split, "images")?;
            lab.public_file(split, "labels")?;
        }
        if let Some(schema) = &lab.manifest.recipe {
            if let Some(crate::recipe::ParamSpec::Multi { choices, .. }) = schema.get("frozen") {
                if let Some(c) = choices.iter().find(|c| !FREEZABLE.contains(&c.as_str())) {
                    return Err(LabError::invalid(
                        &file,
                        "recipe.param (frozen).choices",
                        format!("layer groups from {FREEZABLE:?}, found {c:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn checkpoint_spec(&self, lab: &Lab) -> Result<Vec<TensorSpec>, ProgramError> {
        let s = settings(lab)?;
        Ok(model_spec(&s, s.classes.len()))
    }

    fn build_base(
        &self,
        lab: &Lab,
        opts: &RunOptions,
        sink: &mut dyn EventSink,
    ) -> Result<BaseReport, ProgramError> {
        let s = settings(lab)?;
        let (b, seed) = base_build(lab)?;
        let n = b.classes.len();
        let device = opts.device.open()?;
        let load = |split: &str| -> Result<ImageSet, ProgramError> {
            Ok(load_set(
                &lab.public_file(split, "images")?,
                &lab.public_file(split, "labels")?,
                b.label_offset,
                n,
            )?
            .to_device(&device)?)
        };
        let (train, valid) = (load(&b.train_split)?, load(&b.valid_split)?);
        let config = TrainConfig {
            learning_rate: b.learning_rate,
            schedule: crate::train::ScheduleKind::Cosine,
            warmup_steps: b.steps / 20,
            budget: crate::train::Budget::Steps(b.steps),
            batch_size: b.batch_size,
            weight_decay: b.weight_decay,
            grad_clip: Some(1.0),
            seed,
            eval_every: (b.steps / 5).max(1),
            ..TrainConfig::default()
        };
        let total = scale_steps(b.steps, opts.step_scale);
        let plan = FitPlan {
            total_steps: total,
            warmup: scale_steps(config.warmup_steps, opts.step_scale).min(total),
            eval_every: scale_steps(config.eval_every, opts.step_scale),
            config: &config,
            device,
        };
        let start = init_weights(&s, n, seed)?;
        let FitResult { weights, steps, .. } = fit_image(start, &train, &valid, &plan, sink)?;
        let valid_metric = accuracy(&weights, &valid)?;
        let path = lab.base_checkpoint_path()?;
        let bytes = save_checkpoint(&weights, &path)?;
        sink.emit(Event::Checkpoint {
            path: path.display().to_string(),
            bytes,
        });
        Ok(BaseReport {
            checkpoint: path,
            bytes,
            valid_metric,
            steps,
        })
    }

    fn initial_weights(
        &self,
        lab: &Lab,
        seed: u64,
    ) -> Result<HashMap<String, Tensor>, ProgramError> {
        let s = settings(lab)?;
        let (b, _) = base_build(lab)?;
        let path = lab.base_checkpoint_path()?;
        if !path.is_file() {
            return Err(ProgramError::Other(format!(
                "base checkpoint {} is missing; run `sanhak lab build-base {}`",
                path.display(),
                lab.id()
            )));
        }
        let base = load_checked(&path, &model_spec(&s, b.classes.len()), &Device::Cpu)
            .map_err(|e| ProgramError::Other(format!("base checkpoint {}: {e}", path.display())))?;
        // A fresh head for the new classes, seeded by the run's seed.
        let fresh = init_weights(&s, s.classes.len(), seed)?;
        let mut out = HashMap::new();
        for (k, t) in base {
            if !k.starts_with("head.") {
                out.insert(k, t);
            }
        }
        for (k, t) in fresh {
            if k.starts_with("head.") {
                out.insert(k, t);
            }
        }
        Ok(out)
    }

    fn train(
        &self,
        lab: &Lab,
        config: &TrainConfig,
        out_dir: &Path,
        opts: &RunOptions,
        sink: &mut dyn EventSink,
    ) -> Result<RunOutcome, ProgramError> {
        let s = settings(lab)?;
        if let Some(f) = config
            .frozen
            .iter()
            .find(|f| !FREEZABLE.contains(&f.as_str()))
        {
            return Err(ProgramError::Other(format!(
                "unknown layer group {f:?} to freeze"
            )));
        }
        let mut record = RunRecord::start();
        let device = opts.device.open()?;
        let (train, valid) = self.sets(lab, &s, &device)?;
        let total = config.total_steps(train.len(), opts.step_scale);
        let plan = FitPlan {
            total_steps: total,
            warmup: scale_steps(config.warmup_steps, opts.step_scale).min(total),
            eval_every: scale_steps(config.eval_every, opts.step_scale),
            config,
            device,
        };
        let start: BTreeMap<String, Tensor> = self
            .initial_weights(lab, config.seed)?
            .into_iter()
            .collect();
        let FitResult {
            weights,
            valid_metric,
            steps,
        } = {
            let mut tee = TeeSink {
                first: sink,
                second: &mut record.events,
            };
            fit_image(start, &train, &valid, &plan, &mut tee)?
        };
        let fitted = fit::Fitted {
            weights,
            valid_metric,
            steps,
        };
        finish_run(out_dir, fitted, config, METRIC, Vec::new(), record, sink)
    }

    fn evaluate(
        &self,
        lab: &Lab,
        weights: &HashMap<String, Tensor>,
        split: &str,
        hidden: bool,
    ) -> Result<Evaluation, ProgramError> {
        let s = settings(lab)?;
        let file = |role: &str| {
            if hidden {
                lab.hidden_file(split, role)
            } else {
                lab.public_file(split, role)
            }
        };
        let set = load_set(
            &file("images")?,
            &file("labels")?,
            s.label_offset,
            s.classes.len(),
        )?;
        let w: BTreeMap<String, Tensor> = weights
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let preds = predict(&w, &set)?;
        let examples = preds
            .iter()
            .zip(&set.label_vec)
            .map(|(&p, &l)| ExampleScore {
                numerator: f64::from(u8::from(p == l)),
                denominator: 1.0,
                label: Some(l),
                predicted: Some(p),
            })
            .collect();
        Ok(Evaluation {
            examples,
            class_names: Some(s.classes.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn tiny() -> Settings {
        Settings {
            channels: [2, 3],
            hidden: 4,
            classes: vec!["a".into(), "b".into(), "c".into()],
            label_offset: 0,
            train_split: "train".into(),
            valid_split: "valid".into(),
        }
    }

    fn tiny_batch(dtype: DType) -> (Tensor, Tensor) {
        let mut rng = StdRng::seed_from_u64(9);
        let x: Vec<f32> = (0..4 * SIDE * SIDE)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let x = Tensor::from_vec(x, (4, 1, SIDE, SIDE), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let y = Tensor::from_vec(vec![0u32, 1, 2, 1], 4, &Device::Cpu).unwrap();
        (x, y)
    }

    fn vars_of(
        w: &BTreeMap<String, Tensor>,
        dtype: DType,
    ) -> (BTreeMap<String, Tensor>, Vec<(String, Var)>) {
        let mut weights = BTreeMap::new();
        let mut vars = Vec::new();
        for (k, t) in w {
            let v = Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
            weights.insert(k.clone(), v.as_tensor().clone());
            vars.push((k.clone(), v));
        }
        (weights, vars)
    }

    #[test]
    fn max_pool_matches_candle_forward() {
        let (x, _) = tiny_batch(DType::F32);
        let a: Vec<f32> = max_pool_2x2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = x
            .max_pool2d(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn every_var_gets_a_finite_nonzero_gradient() {
        let s = tiny();
        let init = init_weights(&s, 3, 1).unwrap();
        let (weights, vars) = vars_of(&init, DType::F32);
        let (x, y) = tiny_batch(DType::F32);
        let loss =
            candle_nn::loss::cross_entropy(&forward(&weights, &x, None).unwrap(), &y).unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(vars.len(), 8);
        for (name, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(g.iter().any(|x| *x != 0.0), "{name}: zero gradient");
        }
    }

    #[test]
    fn finite_differences_agree_with_backprop() {
        let s = tiny();
        let init = init_weights(&s, 3, 2).unwrap();
        let (x, y) = tiny_batch(DType::F64);
        let loss_of = |w: &BTreeMap<String, Tensor>| -> f64 {
            candle_nn::loss::cross_entropy(&forward(w, &x, None).unwrap(), &y)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (weights, vars) = vars_of(&init, DType::F64);
        let grads = candle_nn::loss::cross_entropy(&forward(&weights, &x, None).unwrap(), &y)
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-6;
        for (name, v) in &vars {
            let g: Vec<f64> = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, base.len() / 2, base.len() - 1] {
                let mut numeric = 0.0;
                for sign in [1.0, -1.0] {
                    let mut p = base.clone();
                    p[idx] += sign * eps;
                    let mut w = weights.clone();
                    w.insert(
                        name.clone(),
                        Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap(),
                    );
                    numeric += sign * loss_of(&w);
                }
                numeric /= 2.0 * eps;
                let err = (numeric - g[idx]).abs() / (numeric.abs() + g[idx].abs()).max(1e-6);
                assert!(
                    err < 1e-4,
                    "{name}[{idx}]: numeric {numeric} vs backprop {}",
                    g[idx]
                );
            }
        }
    }

    #[test]
    fn frozen_groups_do_not_change() {
        let s = tiny();
        let (x, _) = tiny_batch(DType::F32);
        let n = 4;
        let set = ImageSet {
            images: x,
            labels: Tensor::from_vec(vec![0u32, 1, 2, 1], n, &Device::Cpu).unwrap(),
            label_vec: vec![0, 1, 2, 1],
        };
        let init = init_weights(&s, 3, 3).unwrap();
        let cfg = TrainConfig {
            frozen: vec!["conv1".into(), "fc".into()],
            batch_size: 4,
            learning_rate: 1e-2,
            ..TrainConfig::default()
        };
        let plan = FitPlan {
            total_steps: 3,
            warmup: 0,
            eval_every: 3,
            config: &cfg,
            device: Device::Cpu,
        };
        let FitResult {
            weights: out,
            steps,
            ..
        } = fit_image(
            init.clone(),
            &set,
            &set,
            &plan,
            &mut crate::train::events::NullSink,
        )
        .unwrap();
        assert_eq!(steps, 3);
        let same = |k: &str| {
            let a: Vec<f32> = init[k].flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = out[k].flatten_all().unwrap().to_vec1().unwrap();
            a == b
        };
        assert!(same("conv1.weight") && same("fc.weight") && same("fc.bias"));
        assert!(!same("conv2.weight") && !same("head.weight"));
    }
}
