//! Program `byte-gpt`: domain adaptation of a byte-level tiny GPT.
//!
//! The model is [`crate::nn::gpt::Gpt`] with the shapes in
//! `[program.settings]` (vocabulary 256: raw UTF-8 bytes). `build-base`
//! pretrains it on the lab's base corpus; a run starts from that base and
//! adapts it to the lab's adaptation corpus, either by training the weights
//! directly (optionally with layer groups frozen) or with LoRA adapters,
//! which are merged into the weights before the checkpoint is written, so
//! the grader always loads the plain architecture.
//!
//! Metric: bits per byte on held-out text (lower is better). The text is cut
//! into consecutive, non-overlapping windows of the context length; each
//! window is one graded example with `numerator` = bits and `denominator` =
//! predicted bytes, so the split's metric is total bits / total bytes.
//!
//! Layer groups (for `frozen`): `embeddings` (`wte`, `wpe`), `block_{i}`
//! (`h.{i}.*`) and `head` (`ln_f`, `lm_head`). LoRA targets: `c_attn`,
//! `c_proj` (attention and MLP output projections), `attn.c_proj`,
//! `mlp.c_proj`, `c_fc`, `lm_head`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;

use super::{
    finish_run, BaseReport, Evaluation, ExampleScore, Program, ProgramError, RunOutcome, RunRecord,
};
use crate::grade::checkpoint::{load_checked, TensorSpec};
use crate::lab::{parse_settings, Direction, Lab, LabError};
use crate::nn::gpt::{random_batch, Gpt, GptConfig, BYTE_VOCAB};
use crate::nn::init::{seeded_var_builder, varmap_from_tensors, vars_with_prefix};
use crate::nn::linear::LoraSpec;
use crate::train::checkpoint::save_checkpoint;
use crate::train::events::{Event, EventSink, TeeSink};
use crate::train::{
    metrics1, scale_steps, Budget, EarlyStopping, EvalVerdict, Optimizer, RunOptions, Schedule,
    ScheduleKind, TrainConfig,
};

pub const NAME: &str = "byte-gpt";
const METRIC: &str = "bits_per_byte";
/// The data role of a text split.
const TEXT_ROLE: &str = "text";
/// LoRA target modules a recipe may name.
pub const LORA_TARGETS: &[&str] = &[
    "c_attn",
    "c_proj",
    "attn.c_proj",
    "mlp.c_proj",
    "c_fc",
    "lm_head",
];

const SUPPORTED: &[&str] = &[
    "learning_rate",
    "schedule",
    "warmup_steps",
    "steps",
    "batch_size",
    "weight_decay",
    "grad_clip",
    "seed",
    "frozen",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "dropout",
    "early_stopping_patience",
    "eval_every",
];

/// `[program.settings]` of a byte-gpt lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    /// Context length in bytes.
    pub block_size: usize,
    /// Public split of the adaptation corpus used for training.
    pub train_split: String,
    /// Public split used for validation (evaluations, early stopping).
    pub valid_split: String,
    /// Text the model continues after training, shown as a sample.
    #[serde(default = "default_prompt")]
    pub sample_prompt: String,
    /// Bytes generated for the sample.
    #[serde(default = "default_sample_bytes")]
    pub sample_bytes: usize,
    /// Windows per forward pass when evaluating.
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
}

fn default_prompt() -> String {
    "제1조".into()
}
fn default_sample_bytes() -> usize {
    120
}
fn default_eval_batch() -> usize {
    32
}

impl Settings {
    pub fn gpt_config(&self, dropout: f64) -> GptConfig {
        GptConfig {
            vocab_size: BYTE_VOCAB,
            n_layer: self.n_layer,
            n_embd: self.n_embd,
            n_head: self.n_head,
            block_size: self.block_size,
            dropout,
        }
    }

    /// The layer groups of this architecture.
    pub fn groups(&self) -> Vec<String> {
        let mut g = vec!["embeddings".to_string()];
        g.extend((0..self.n_layer).map(|i| format!("block_{i}")));
        g.push("head".into());
        g
    }
}

/// `[base.build]` of a byte-gpt lab: pretraining on the base corpus (AdamW,
/// warmup then cosine decay, clip 1.0).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseBuild {
    pub train_split: String,
    pub valid_split: String,
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_base_eval_every")]
    pub eval_every: u64,
}

fn default_base_eval_every() -> u64 {
    250
}

/// The byte-level GPT program.
pub struct ByteGpt;

fn settings(lab: &Lab) -> Result<Settings, LabError> {
    let file = lab.manifest_path();
    let s: Settings = parse_settings(&lab.manifest.program.settings, &file, "program.settings")?;
    s.gpt_config(0.0)
        .validate()
        .map_err(|m| LabError::invalid(&file, "program.settings", m))?;
    if s.n_layer > 64 || s.n_embd > 4096 || s.block_size > 4096 {
        return Err(LabError::invalid(
            &file,
            "program.settings",
            "at most 64 layers, width 4096 and context 4096",
        ));
    }
    if s.eval_batch == 0 || s.sample_bytes > 4096 {
        return Err(LabError::invalid(
            &file,
            "program.settings",
            "eval_batch ≥ 1 and sample_bytes ≤ 4096",
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
            "a [base] table (byte-gpt labs adapt a pretrained base)",
        )
    })?;
    let b: BaseBuild = parse_settings(&base.build, &file, "base.build")?;
    if b.steps == 0
        || b.batch_size == 0
        || b.eval_every == 0
        || !(b.learning_rate > 0.0 && b.learning_rate.is_finite())
        || !(0.0..=1.0).contains(&b.weight_decay)
    {
        return Err(LabError::invalid(
            &file,
            "base.build",
            "positive steps, batch_size, eval_every and learning_rate, weight_decay in [0, 1]",
        ));
    }
    Ok((b, base.seed))
}

/// The layer group of a tensor name.
fn group_of(name: &str) -> String {
    if name.starts_with("wte.") || name.starts_with("wpe.") {
        return "embeddings".into();
    }
    if let Some(rest) = name.strip_prefix("h.") {
        let idx = rest.split('.').next().unwrap_or_default();
        return format!("block_{idx}");
    }
    "head".into()
}

/// Tensor names and shapes of the architecture (from a freshly built model,
/// so the spec and the model can never disagree).
pub fn model_spec(s: &Settings) -> Result<Vec<TensorSpec>, candle_core::Error> {
    let vm = VarMap::new();
    Gpt::new(
        seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu),
        &s.gpt_config(0.0),
    )?;
    Ok(vars_with_prefix(&vm, &[])?
        .into_iter()
        .map(|(name, v)| TensorSpec::f32(name, v.dims()))
        .collect())
}

/// Freshly initialised weights (seeded), for pretraining from scratch.
pub fn init_weights(
    s: &Settings,
    seed: u64,
) -> Result<HashMap<String, Tensor>, candle_core::Error> {
    let vm = VarMap::new();
    Gpt::new(
        seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu),
        &s.gpt_config(0.0),
    )?;
    Ok(vars_with_prefix(&vm, &[])?
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect())
}

fn read_text(path: &Path, min_len: usize) -> Result<Vec<u8>, ProgramError> {
    let data = std::fs::read(path).map_err(|e| ProgramError::Data {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if data.len() < min_len {
        return Err(ProgramError::Data {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes; at least {min_len} are needed (one context window plus one)",
                data.len()
            ),
        });
    }
    Ok(data)
}

/// Per-window scores of `model` on `data`: consecutive non-overlapping
/// windows of the context length, each predicting its next bytes (every byte
/// but the first is predicted once). Numerator: bits; denominator: bytes.
pub fn window_scores(
    model: &Gpt,
    data: &[u8],
    batch: usize,
) -> Result<Vec<ExampleScore>, candle_core::Error> {
    let t = model.config().block_size;
    let mut windows: Vec<(usize, usize)> = Vec::new();
    let mut s = 0;
    while s + 1 < data.len() {
        let len = t.min(data.len() - 1 - s);
        windows.push((s, len));
        s += len;
    }
    let mut out = Vec::with_capacity(windows.len());
    let mut i = 0;
    while i < windows.len() {
        // A group of equally long windows (all full ones, then the tail).
        let len = windows[i].1;
        let mut j = i;
        while j < windows.len() && j - i < batch.max(1) && windows[j].1 == len {
            j += 1;
        }
        let group = &windows[i..j];
        let mut xs = Vec::with_capacity(group.len() * len);
        let mut ys = Vec::with_capacity(group.len() * len);
        for (s, _) in group {
            xs.extend(data[*s..*s + len].iter().map(|&v| u32::from(v)));
            ys.extend(data[*s + 1..*s + 1 + len].iter().map(|&v| u32::from(v)));
        }
        let dev = model.device();
        let x = Tensor::from_vec(xs, (group.len(), len), dev)?;
        let y = Tensor::from_vec(ys, (group.len(), len, 1), dev)?;
        let logits = model.forward(&x)?.to_dtype(DType::F64)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nats: Vec<f64> = logp
            .gather(&y, D::Minus1)?
            .squeeze(D::Minus1)?
            .sum(D::Minus1)?
            .neg()?
            .to_vec1()?;
        out.extend(nats.into_iter().map(|n| ExampleScore {
            numerator: n / std::f64::consts::LN_2,
            denominator: len as f64,
            label: None,
            predicted: None,
        }));
        i = j;
    }
    Ok(out)
}

/// Bits per byte of `model` on `data`.
pub fn bits_per_byte_on(model: &Gpt, data: &[u8], batch: usize) -> Result<f64, ProgramError> {
    let scores = window_scores(model, data, batch)?;
    let eval = Evaluation {
        examples: scores,
        class_names: None,
    };
    eval.metric()
        .ok_or_else(|| ProgramError::Other("no byte to evaluate".into()))
}

/// Builds a plain model from tensors (evaluation, no gradients).
fn plain_model(
    weights: &HashMap<String, Tensor>,
    cfg: &GptConfig,
) -> Result<Gpt, candle_core::Error> {
    Gpt::new(
        VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu),
        cfg,
    )
}

/// Settings of one call of [`fit`].
struct FitPlan<'a> {
    gpt: GptConfig,
    total_steps: u64,
    warmup: u64,
    eval_every: u64,
    eval_batch: usize,
    config: &'a TrainConfig,
    /// Where to train.
    device: Device,
}

struct FitResult {
    /// Plain (merged) weights to save.
    weights: HashMap<String, Tensor>,
    /// Validation bits per byte of those weights.
    valid_metric: Option<f64>,
    steps: u64,
}

/// Deep copies (AdamW updates `Var`s in place, so a detached view would move).
fn snapshot(model: &Gpt) -> Result<HashMap<String, Tensor>, candle_core::Error> {
    model
        .merged_tensors()?
        .into_iter()
        .map(|(k, t)| Ok((k, t.copy()?)))
        .collect()
}

/// The training loop shared by adaptation and base building.
fn fit(
    start: &HashMap<String, Tensor>,
    train: &[u8],
    valid: &[u8],
    plan: &FitPlan<'_>,
    sink: &mut dyn EventSink,
) -> Result<FitResult, ProgramError> {
    let cfg = plan.config;
    let t0 = Instant::now();
    let dev = &plan.device;
    let frozen = |name: &str| cfg.frozen.iter().any(|g| *g == group_of(name));
    // Two ways to train: the weights themselves, or LoRA adapters on a frozen base.
    let (model, vars) = match &cfg.lora {
        None => {
            let vm = varmap_from_tensors(start, dev)?;
            let model = Gpt::new(
                seeded_var_builder(&vm, cfg.seed, DType::F32, dev),
                &plan.gpt,
            )?;
            let vars: Vec<Var> = vars_with_prefix(&vm, &[])?
                .into_iter()
                .filter(|(n, _)| !frozen(n))
                .map(|(_, v)| v)
                .collect();
            (model, vars)
        }
        Some(l) => {
            let lcfg = l.clone();
            let lora_vm = VarMap::new();
            let spec = LoraSpec::new(
                &lcfg,
                seeded_var_builder(&lora_vm, cfg.seed, DType::F32, dev),
            );
            let model = Gpt::new_with_lora(
                VarBuilder::from_tensors(start.clone(), DType::F32, dev),
                &plan.gpt,
                Some(&spec),
            )?;
            let vars: Vec<Var> = vars_with_prefix(&lora_vm, &[])?
                .into_iter()
                .filter(|(n, _)| !frozen(n))
                .map(|(_, v)| v)
                .collect();
            (model, vars)
        }
    };
    let trainable_params: u64 = vars.iter().map(|v| v.elem_count() as u64).sum();
    if vars.is_empty() {
        return Err(ProgramError::Other(
            "nothing to train: every layer group is frozen (or no LoRA target matched a trainable group)"
                .into(),
        ));
    }
    let schedule = Schedule {
        kind: cfg.schedule,
        peak: cfg.learning_rate,
        warmup: plan.warmup.min(plan.total_steps),
        total: plan.total_steps,
    };
    let mut opt = Optimizer::new(vars, cfg.weight_decay, schedule, cfg.grad_clip)?;
    let mut batch_rng = StdRng::seed_from_u64(cfg.seed ^ 0xba7c_4e5d);
    let mut drop_rng = StdRng::seed_from_u64(cfg.seed ^ 0x0d20_f0a7);
    let mut early = EarlyStopping::new(cfg.early_stopping_patience, Direction::Lower);
    let mut best: Option<HashMap<String, Tensor>> = None;
    let mut last_valid = None;
    sink.emit(Event::Started {
        program: NAME.into(),
        seed: cfg.seed,
        total_steps: plan.total_steps,
        trainable_params,
    });
    let block = plan.gpt.block_size;
    let mut step = 0;
    while step < plan.total_steps {
        step += 1;
        let (x, y) = random_batch(train, cfg.batch_size, block, &mut batch_rng, dev)?;
        let rng = (plan.gpt.dropout > 0.0).then_some(&mut drop_rng);
        let loss = model.loss_t(&x, &y, rng)?;
        let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_v.is_finite() {
            sink.emit(Event::Step {
                step,
                loss: loss_v,
                lr: schedule.lr_at(step),
                grad_norm: f64::NAN,
                elapsed_s: t0.elapsed().as_secs_f64(),
            });
            sink.emit(Event::Log {
                message: format!("loss became {loss_v} at step {step}; training stopped"),
            });
            break;
        }
        let stats = opt.backward_step(&loss)?;
        sink.emit(Event::Step {
            step,
            loss: loss_v,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
        if step % plan.eval_every == 0 || step == plan.total_steps {
            let bpb = bits_per_byte_on(&model, valid, plan.eval_batch)?;
            last_valid = Some(bpb);
            sink.emit(Event::Eval {
                step,
                metrics: metrics1(METRIC, bpb),
                elapsed_s: t0.elapsed().as_secs_f64(),
            });
            match early.observe(step, bpb) {
                EvalVerdict::Improved if early.enabled() => best = Some(snapshot(&model)?),
                EvalVerdict::Stop => {
                    let (best_step, best_metric) = early.best().unwrap_or((step, bpb));
                    sink.emit(Event::EarlyStop {
                        step,
                        best_step,
                        best_metric,
                    });
                    break;
                }
                _ => {}
            }
        }
    }
    let (weights, valid_metric) = match best {
        Some(b) => (b, early.best().map(|(_, m)| m)),
        None => (snapshot(&model)?, last_valid),
    };
    Ok(FitResult {
        weights,
        valid_metric,
        steps: step,
    })
}

/// A sample continuation of the lab's prompt (seeded, temperature 0.8).
fn sample_text(model: &Gpt, s: &Settings) -> Result<String, candle_core::Error> {
    let bytes = model.generate(s.sample_prompt.as_bytes(), s.sample_bytes, 0.8, 0)?;
    Ok(format!(
        "{}{}",
        s.sample_prompt,
        String::from_utf8_lossy(&bytes)
    ))
}

fn check_recipe_names(s: &Settings, config: &TrainConfig) -> Result<(), ProgramError> {
    let groups = s.groups();
    if let Some(f) = config.frozen.iter().find(|f| !groups.contains(f)) {
        return Err(ProgramError::Other(format!(
            "unknown layer group {f:?} to freeze (groups: {groups:?})"
        )));
    }
    if let Some(l) = &config.lora {
        if l.targets.is_empty() {
            return Err(ProgramError::Other(
                "lora_rank > 0 needs at least one lora_targets module".into(),
            ));
        }
        if let Some(t) = l
            .targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(ProgramError::Other(format!(
                "unknown LoRA target {t:?} (targets: {LORA_TARGETS:?})"
            )));
        }
    }
    if !matches!(config.budget, Budget::Steps(_)) {
        return Err(ProgramError::Other(
            "byte-gpt trains for a number of steps, not epochs".into(),
        ));
    }
    Ok(())
}

impl ByteGpt {
    fn base_weights(
        &self,
        lab: &Lab,
        s: &Settings,
    ) -> Result<HashMap<String, Tensor>, ProgramError> {
        let path = lab.base_checkpoint_path()?;
        if !path.is_file() {
            return Err(ProgramError::Other(format!(
                "base checkpoint {} is missing; run `sanhak lab build-base {}`",
                path.display(),
                lab.id()
            )));
        }
        load_checked(&path, &model_spec(s)?, &Device::Cpu)
            .map_err(|e| ProgramError::Other(format!("base checkpoint {}: {e}", path.display())))
    }
}

impl Program for ByteGpt {
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
            lab.public_file(split, TEXT_ROLE)?;
        }
        lab.hidden_file(&lab.manifest.grading.split, TEXT_ROLE)?;
        let (b, _) = base_build(lab)?;
        for split in [&b.train_split, &b.valid_split] {
            lab.public_file(split, TEXT_ROLE)?;
        }
        if lab.manifest.grading.direction != Direction::Lower {
            return Err(LabError::invalid(
                &file,
                "grading.direction",
                "\"lower\" (bits per byte: lower is better)",
            ));
        }
        if let Some(schema) = &lab.manifest.recipe {
            let groups = s.groups();
            if let Some(crate::recipe::ParamSpec::Multi { choices, .. }) = schema.get("frozen") {
                if let Some(c) = choices.iter().find(|c| !groups.contains(c)) {
                    return Err(LabError::invalid(
                        &file,
                        "recipe.param (frozen).choices",
                        format!("layer groups from {groups:?}, found {c:?}"),
                    ));
                }
            }
            if let Some(crate::recipe::ParamSpec::Multi { choices, .. }) =
                schema.get("lora_targets")
            {
                if let Some(c) = choices.iter().find(|c| !LORA_TARGETS.contains(&c.as_str())) {
                    return Err(LabError::invalid(
                        &file,
                        "recipe.param (lora_targets).choices",
                        format!("modules from {LORA_TARGETS:?}, found {c:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn checkpoint_spec(&self, lab: &Lab) -> Result<Vec<TensorSpec>, ProgramError> {
        Ok(model_spec(&settings(lab)?)?)
    }

    fn build_base(
        &self,
        lab: &Lab,
        opts: &RunOptions,
        sink: &mut dyn EventSink,
    ) -> Result<BaseReport, ProgramError> {
        let s = settings(lab)?;
        let (b, seed) = base_build(lab)?;
        let min = s.block_size + 2;
        let train = read_text(&lab.public_file(&b.train_split, TEXT_ROLE)?, min)?;
        let valid = read_text(&lab.public_file(&b.valid_split, TEXT_ROLE)?, min)?;
        let config = TrainConfig {
            learning_rate: b.learning_rate,
            schedule: ScheduleKind::Cosine,
            warmup_steps: b.warmup_steps,
            budget: Budget::Steps(b.steps),
            batch_size: b.batch_size,
            weight_decay: b.weight_decay,
            grad_clip: Some(1.0),
            seed,
            eval_every: b.eval_every,
            ..TrainConfig::default()
        };
        let total = scale_steps(b.steps, opts.step_scale);
        let plan = FitPlan {
            gpt: s.gpt_config(0.0),
            total_steps: total,
            warmup: scale_steps(config.warmup_steps, opts.step_scale).min(total),
            eval_every: scale_steps(config.eval_every, opts.step_scale),
            eval_batch: s.eval_batch,
            config: &config,
            device: opts.device.open()?,
        };
        let start = init_weights(&s, seed)?;
        let FitResult { weights, steps, .. } = fit(&start, &train, &valid, &plan, sink)?;
        let valid_metric = bits_per_byte_on(
            &plain_model(&weights, &s.gpt_config(0.0))?,
            &valid,
            s.eval_batch,
        )?;
        let path = lab.base_checkpoint_path()?;
        let sorted: BTreeMap<String, Tensor> = weights.into_iter().collect();
        let bytes = save_checkpoint(&sorted, &path)?;
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
        _seed: u64,
    ) -> Result<HashMap<String, Tensor>, ProgramError> {
        // The base model as it is: nothing new is initialised for adaptation.
        let s = settings(lab)?;
        self.base_weights(lab, &s)
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
        check_recipe_names(&s, config)?;
        let mut record = RunRecord::start();
        let min = s.block_size + 2;
        let train = read_text(&lab.public_file(&s.train_split, TEXT_ROLE)?, min)?;
        let valid = read_text(&lab.public_file(&s.valid_split, TEXT_ROLE)?, min)?;
        let total = config.total_steps(train.len(), opts.step_scale);
        let plan = FitPlan {
            gpt: s.gpt_config(config.dropout),
            total_steps: total,
            warmup: scale_steps(config.warmup_steps, opts.step_scale).min(total),
            eval_every: scale_steps(config.eval_every, opts.step_scale),
            eval_batch: s.eval_batch,
            config,
            device: opts.device.open()?,
        };
        let start = self.base_weights(lab, &s)?;
        let FitResult {
            weights,
            valid_metric,
            steps,
        } = {
            let mut tee = TeeSink {
                first: sink,
                second: &mut record.events,
            };
            fit(&start, &train, &valid, &plan, &mut tee)?
        };
        // The sample comes from the weights that are saved (the best ones under
        // early stopping), read back as the plain architecture.
        let saved = plain_model(&weights, &s.gpt_config(0.0))?;
        let sample = sample_text(&saved, &s)?;
        let fitted = super::fit::Fitted {
            weights: weights.into_iter().collect(),
            valid_metric,
            steps,
        };
        let extra = vec![Event::Log {
            message: format!("sample: {sample}"),
        }];
        finish_run(out_dir, fitted, config, METRIC, extra, record, sink)
    }

    fn evaluate(
        &self,
        lab: &Lab,
        weights: &HashMap<String, Tensor>,
        split: &str,
        hidden: bool,
    ) -> Result<Evaluation, ProgramError> {
        let s = settings(lab)?;
        let path = if hidden {
            lab.hidden_file(split, TEXT_ROLE)?
        } else {
            lab.public_file(split, TEXT_ROLE)?
        };
        let data = read_text(&path, 2)?;
        let model = plain_model(weights, &s.gpt_config(0.0))?;
        Ok(Evaluation {
            examples: window_scores(&model, &data, s.eval_batch)?,
            class_names: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;
    use crate::train::events::NullSink;

    const BASE_TEXT: &str =
        "To be, or not to be: that is the question. 데비안은 자유 소프트웨어입니다.\n";
    const ADAPT_TEXT: &str = "제1조 대한민국은 민주공화국이다. 제2조 주권은 국민에게 있다.\n";

    fn manifest(extra_settings: &str) -> String {
        format!(
            r#"
id = "tiny-lm"
title = "Tiny"
summary = "A tiny byte-gpt lab for tests."
version = "0.1.0"
kind = "recipe"

[program]
name = "byte-gpt"

[program.settings]
n_layer = 1
n_embd = 16
n_head = 2
block_size = 16
train_split = "adapt-train"
valid_split = "adapt-valid"
sample_bytes = 12
{extra_settings}

[base]
checkpoint = "base/model.safetensors"
seed = 3

[base.build]
train_split = "base-train"
valid_split = "base-valid"
steps = 40
batch_size = 8
learning_rate = 0.01
eval_every = 20

[data.base-train]
text = "data/base_train.txt"
[data.base-valid]
text = "data/base_valid.txt"
[data.adapt-train]
text = "data/adapt_train.txt"
[data.adapt-valid]
text = "data/adapt_valid.txt"
[data.test]
text = "hidden/adapt_test.txt"

[[recipe.param]]
name = "learning_rate"
type = "float"
min = 1e-6
max = 0.1
default = 1e-3
help = "lr"

[[recipe.param]]
name = "steps"
type = "int"
min = 1
max = 500
default = 10
help = "steps"

[[recipe.param]]
name = "batch_size"
type = "int"
min = 1
max = 64
default = 8
help = "batch"

[[recipe.param]]
name = "seed"
type = "int"
min = 0
max = 100
default = 0
help = "seed"

[[recipe.param]]
name = "frozen"
type = "multi"
choices = ["embeddings", "block_0", "head"]
default = []
help = "frozen"

[[recipe.param]]
name = "lora_rank"
type = "int"
min = 0
max = 8
default = 0
help = "rank"

[[recipe.param]]
name = "lora_targets"
type = "multi"
choices = ["c_attn", "c_proj", "c_fc"]
default = ["c_attn"]
help = "targets"

[[recipe.param]]
name = "dropout"
type = "float"
min = 0.0
max = 0.5
default = 0.0
help = "dropout"

[[recipe.param]]
name = "eval_every"
type = "int"
min = 1
max = 500
default = 10
help = "eval"

[[recipe.param]]
name = "early_stopping_patience"
type = "int"
min = 0
max = 10
default = 0
help = "patience"

[grading]
metric = "bits_per_byte"
direction = "lower"
baseline = 6.0
target = 1.0
points = 100
split = "test"
public_fraction = 0.5
feedback = ["public_metric", "private_metric", "training_curve", "hints"]

[limits]
wall_seconds = 60
memory_mb = 512
threads = 1
gpu_memory_mb = 0
expected_gpu_seconds = 0.0
"#
        )
    }

    /// A tiny lab in a temporary folder, with its base built.
    fn tiny_lab() -> (tempfile::TempDir, Lab) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny-lm");
        for d in ["data", "hidden", "starter", "solution", "base"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("lab.toml"), manifest("")).unwrap();
        std::fs::write(dir.join("README.md"), "# tiny\n").unwrap();
        std::fs::write(dir.join("DATA.md"), "synthetic\n").unwrap();
        std::fs::write(dir.join("data/base_train.txt"), BASE_TEXT.repeat(30)).unwrap();
        std::fs::write(dir.join("data/base_valid.txt"), BASE_TEXT.repeat(3)).unwrap();
        std::fs::write(dir.join("data/adapt_train.txt"), ADAPT_TEXT.repeat(30)).unwrap();
        std::fs::write(dir.join("data/adapt_valid.txt"), ADAPT_TEXT.repeat(3)).unwrap();
        std::fs::write(dir.join("hidden/adapt_test.txt"), ADAPT_TEXT.repeat(4)).unwrap();
        let lab = Lab::load(&dir).unwrap();
        let report = ByteGpt
            .build_base(&lab, &RunOptions::default(), &mut NullSink)
            .unwrap();
        assert_eq!(report.steps, 40);
        (tmp, lab)
    }

    fn recipe(lab: &Lab, text: &str) -> Recipe {
        lab.schema().unwrap().validate(text, "recipe.toml").unwrap()
    }

    fn hidden_bpb(lab: &Lab, weights: &HashMap<String, Tensor>) -> f64 {
        ByteGpt
            .evaluate(lab, weights, "test", true)
            .unwrap()
            .metric()
            .unwrap()
    }

    fn train(lab: &Lab, text: &str, out: &Path) -> (RunOutcome, Vec<Event>) {
        let config = TrainConfig::from_recipe(&recipe(lab, text));
        let mut sink = crate::train::events::VecSink::default();
        let outcome = ByteGpt
            .train(lab, &config, out, &RunOptions::default(), &mut sink)
            .unwrap();
        (outcome, sink.events)
    }

    fn load(lab: &Lab, path: &Path) -> HashMap<String, Tensor> {
        load_checked(path, &ByteGpt.checkpoint_spec(lab).unwrap(), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn spec_matches_the_model_and_groups_cover_it() {
        let s: Settings = toml::from_str(
            "n_layer = 2\nn_embd = 8\nn_head = 2\nblock_size = 4\ntrain_split = \"a\"\nvalid_split = \"b\"",
        )
        .unwrap();
        let spec = model_spec(&s).unwrap();
        let n: usize = spec.iter().map(|t| t.shape.iter().product::<usize>()).sum();
        assert_eq!(n, s.gpt_config(0.0).num_params());
        assert!(spec
            .iter()
            .any(|t| t.name == "h.1.mlp.c_fc.weight" && t.shape == [32, 8]));
        let groups = s.groups();
        assert_eq!(groups, ["embeddings", "block_0", "block_1", "head"]);
        for t in &spec {
            assert!(groups.contains(&group_of(&t.name)), "{}", t.name);
        }
        assert_eq!(group_of("h.1.attn.c_attn.lora_a"), "block_1");
        assert_eq!(group_of("wpe.weight"), "embeddings");
        assert_eq!(group_of("lm_head.weight"), "head");
    }

    #[test]
    fn window_scores_add_up_to_the_models_own_evaluation() {
        let s: Settings = toml::from_str(
            "n_layer = 1\nn_embd = 8\nn_head = 2\nblock_size = 6\ntrain_split = \"a\"\nvalid_split = \"b\"",
        )
        .unwrap();
        let w = init_weights(&s, 4).unwrap();
        let model = plain_model(&w, &s.gpt_config(0.0)).unwrap();
        let data = "가나다 abc 라마바 xyz".as_bytes();
        let scores = window_scores(&model, data, 2).unwrap();
        // Every byte but the first is predicted once, in windows of at most 6.
        let bytes: f64 = scores.iter().map(|e| e.denominator).sum();
        assert_eq!(bytes as usize, data.len() - 1);
        assert_eq!(scores.len(), (data.len() - 1).div_ceil(6));
        let bits: f64 = scores.iter().map(|e| e.numerator).sum();
        let want = crate::nn::gpt::bits_per_byte(model.eval_nats_per_byte(data, 2).unwrap());
        assert!(
            (bits / bytes - want).abs() < 1e-5,
            "{} vs {want}",
            bits / bytes
        );
    }

    #[test]
    fn adaptation_improves_is_deterministic_and_writes_the_plain_architecture() {
        let (tmp, lab) = tiny_lab();
        let base = ByteGpt.initial_weights(&lab, 0).unwrap();
        let before = hidden_bpb(&lab, &base);
        let text = "learning_rate = 0.01\nsteps = 40\nbatch_size = 8\neval_every = 10\ndropout = 0.1\nseed = 1";
        let (a, events) = train(&lab, text, &tmp.path().join("a"));
        let after = hidden_bpb(&lab, &load(&lab, &a.checkpoint));
        assert!(
            after < before - 0.5,
            "adaptation must lower hidden bits per byte: {before} -> {after}"
        );
        // Eval events on the validation split at the interval, and a sample.
        let evals: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Eval { step, metrics, .. } if metrics.contains_key(METRIC) => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(evals, [10, 20, 30, 40]);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Log { message } if message.starts_with("sample: 제1조")
        )));
        assert_eq!(a.curve.evals.len(), 4);
        assert!(a.valid_metric.is_some());

        let (b, _) = train(&lab, text, &tmp.path().join("b"));
        let bytes_a = std::fs::read(&a.checkpoint).unwrap();
        assert!(
            bytes_a == std::fs::read(&b.checkpoint).unwrap(),
            "same recipe and seed must give the same checkpoint"
        );
        let (c, _) = train(
            &lab,
            &text.replace("seed = 1", "seed = 2"),
            &tmp.path().join("c"),
        );
        assert!(bytes_a != std::fs::read(&c.checkpoint).unwrap());
    }

    #[test]
    fn frozen_groups_stay_fixed() {
        let (tmp, lab) = tiny_lab();
        let base = ByteGpt.initial_weights(&lab, 0).unwrap();
        let (out, _) = train(
            &lab,
            "learning_rate = 0.01\nsteps = 5\nfrozen = [\"embeddings\", \"head\"]",
            tmp.path(),
        );
        let w = load(&lab, &out.checkpoint);
        for (name, t) in &w {
            let same = values(t) == values(&base[name]);
            let group = group_of(name);
            assert_eq!(
                same,
                group == "embeddings" || group == "head",
                "{name} ({group})"
            );
        }
    }

    #[test]
    fn lora_trains_adapters_and_exports_merged_weights() {
        let (tmp, lab) = tiny_lab();
        let base = ByteGpt.initial_weights(&lab, 0).unwrap();
        let before = hidden_bpb(&lab, &base);
        let (out, events) = train(
            &lab,
            "learning_rate = 0.02\nsteps = 40\nlora_rank = 4\nlora_targets = [\"c_attn\", \"c_fc\"]",
            tmp.path(),
        );
        // Only adapters train: rank 4 on c_attn (16→48) and c_fc (16→64).
        let expected = 4 * (16 + 48) + 4 * (16 + 64);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Started { trainable_params, .. } if *trainable_params == expected as u64
        )));
        let w = load(&lab, &out.checkpoint);
        assert_eq!(w.len(), base.len(), "no adapter tensors in the export");
        for (name, t) in &w {
            let changed = values(t) != values(&base[name]);
            let targeted = name.ends_with("c_attn.weight") || name.ends_with("c_fc.weight");
            assert_eq!(changed, targeted, "{name}");
        }
        let after = hidden_bpb(&lab, &w);
        assert!(after < before, "LoRA must help: {before} -> {after}");
    }

    #[test]
    fn early_stopping_keeps_the_best_weights() {
        let (tmp, lab) = tiny_lab();
        // A huge learning rate makes validation worse after the first evaluations.
        let (out, events) = train(
            &lab,
            "learning_rate = 0.1\nsteps = 200\nbatch_size = 8\neval_every = 5\nearly_stopping_patience = 2",
            tmp.path(),
        );
        let stop = events.iter().find_map(|e| match e {
            Event::EarlyStop {
                best_metric, step, ..
            } => Some((*best_metric, *step)),
            _ => None,
        });
        let (best, step) = stop.expect("early stop");
        assert!(step < 200);
        let valid = read_text(&lab.public_file("adapt-valid", TEXT_ROLE).unwrap(), 2).unwrap();
        let s = settings(&lab).unwrap();
        let saved = plain_model(&load(&lab, &out.checkpoint), &s.gpt_config(0.0)).unwrap();
        let got = bits_per_byte_on(&saved, &valid, 32).unwrap();
        assert!((got - best).abs() < 1e-6, "saved {got}, best {best}");
        assert_eq!(out.valid_metric, Some(best));
    }

    #[test]
    fn unknown_groups_and_targets_are_refused() {
        let (tmp, lab) = tiny_lab();
        let mut config = TrainConfig {
            frozen: vec!["block_7".into()],
            ..TrainConfig::default()
        };
        let err = ByteGpt
            .train(
                &lab,
                &config,
                tmp.path(),
                &RunOptions::default(),
                &mut NullSink,
            )
            .unwrap_err();
        assert!(err.to_string().contains("block_7"), "{err}");
        config.frozen.clear();
        config.lora = Some(crate::train::LoraConfig {
            rank: 2,
            alpha: 2.0,
            targets: vec!["wte".into()],
        });
        let err = ByteGpt
            .train(
                &lab,
                &config,
                tmp.path(),
                &RunOptions::default(),
                &mut NullSink,
            )
            .unwrap_err();
        assert!(err.to_string().contains("wte"), "{err}");
    }
}
