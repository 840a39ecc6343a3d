//! Program `sentence-classifier`: a BERT-family encoder, mean pooling and a
//! linear head, fine-tuned to label sentences (sentiment, topic, …).
//!
//! The encoder is one of two, chosen when the lab is loaded:
//! - a shared pretrained model in Hugging Face format (all-MiniLM-L6-v2),
//!   when `[program.settings.pretrained]` names one and it is installed in
//!   the lab's models folder (`sanhak model fetch minilm`); the rubric's
//!   baseline and target then come from that table;
//! - otherwise the lab's own small word-level encoder, pretrained by
//!   `sanhak lab build-base` on the shipped sentences with another labelling
//!   (`[base.build] label_field`, e.g. which site a review comes from). Its
//!   vocabulary (a Hugging Face `tokenizer.json`, word level, BERT
//!   normalisation) is built from the same sentences by `build-base`.
//!
//! Training modes, from the recipe: full fine-tuning (optionally with the
//! embeddings frozen), head-only (`frozen` has `encoder`: the pooled
//! features are computed once and only the head trains) and LoRA
//! (`lora_rank > 0`: adapters on the chosen modules, merged into the
//! checkpoint). The checkpoint always holds the whole classifier with
//! adapters merged, so the grader loads one reference architecture.
//!
//! Data: JSON lines, `{"text": "...", "label": 1}`; a label is a class index
//! or a class name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;

use super::fit::{fit, FitPlan, Fitted, Trainee};
use super::{
    finish_run, BaseReport, Evaluation, ExampleScore, Program, ProgramError, RunOutcome, RunRecord,
};
use crate::grade::checkpoint::{load_checked, TensorSpec};
use crate::lab::{parse_settings, Direction, Grading, Lab, LabError};
use crate::nn::bert::{
    build_classifier, BertClassifier, BertConfig, BertModel, BertTokenizer, EncodedBatch,
    FineTuneMode, HfBert,
};
use crate::nn::init::{seeded_var_builder, vars_with_prefix};
use crate::nn::lora::LoraConfig;
use crate::recipe::ParamSpec;
use crate::train::checkpoint::save_checkpoint;
use crate::train::events::{Event, EventSink, TeeSink};
use crate::train::{
    scale_steps, BatchSampler, Budget, Optimizer, RunOptions, Schedule, ScheduleKind, TrainConfig,
};

pub const NAME: &str = "sentence-classifier";
const METRIC: &str = "accuracy";
/// Groups a recipe may freeze: `encoder` freezes every pretrained tensor
/// (head-only training), `embeddings` only the embedding tables.
pub const FREEZABLE: &[&str] = &["embeddings", "encoder"];
/// Modules LoRA can target (see [`LoraConfig::applies_to`]).
pub const LORA_TARGETS: &[&str] = &[
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "dense",
];
/// Sentences per forward pass when evaluating or caching features.
const EVAL_BATCH: usize = 64;

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
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "dropout",
    "early_stopping_patience",
    "eval_every",
];

/// `[program.settings]` of a sentence-classifier lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Class names; a label `i` in the data is `labels[i]`.
    pub labels: Vec<String>,
    pub train_split: String,
    pub valid_split: String,
    /// The lab's own word-level encoder.
    pub encoder: EncoderSettings,
    /// A shared pretrained model used instead, when installed.
    #[serde(default)]
    pub pretrained: Option<PretrainedSettings>,
}

/// Architecture and vocabulary of the lab's own encoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSettings {
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included.
    pub max_len: usize,
    /// Largest vocabulary, special tokens included.
    pub vocab_size: usize,
    /// Words seen fewer times in the base training split become `[UNK]`.
    pub min_count: usize,
    /// The vocabulary file `build-base` writes, relative to the lab folder.
    pub tokenizer: String,
}

/// A shared pretrained model and the rubric that goes with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainedSettings {
    /// Folder name under the models folder, e.g. `all-MiniLM-L6-v2`.
    pub model: String,
    /// Longest input in tokens.
    pub max_len: usize,
    /// Rubric baseline and target with this model (they replace `[grading]`'s).
    pub baseline: f64,
    pub target: f64,
}

/// `[base.build]`: how the lab's own encoder is pretrained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseBuild {
    /// The JSON field pretraining predicts (not the lab's label).
    pub label_field: String,
    pub classes: Vec<String>,
    pub train_split: String,
    pub valid_split: String,
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
}

impl EncoderSettings {
    /// The BERT config of the lab's own encoder over `vocab_size` tokens.
    pub fn config(&self, vocab_size: usize) -> BertConfig {
        BertConfig {
            vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            intermediate_size: self.intermediate_size,
            hidden_act: "gelu".into(),
            max_position_embeddings: self.max_len,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
        }
    }
}

/// The sentence-classifier program.
pub struct SentenceClassifier;

/// Labelled sentences.
#[derive(Debug, Clone, Default)]
pub struct TextSet {
    pub texts: Vec<String>,
    pub labels: Vec<usize>,
}

impl TextSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The encoder a run uses, with its pretrained tensors.
pub struct Backbone {
    /// `all-MiniLM-L6-v2`, or [`OWN_ENCODER`] for the lab's own.
    pub name: String,
    pub config: BertConfig,
    /// Encoder tensors (no head).
    pub weights: HashMap<String, Tensor>,
    pub tokens: BertTokenizer,
}

/// Name of the lab's own encoder in messages.
pub const OWN_ENCODER: &str = "sanhak-small-encoder";

/// Special tokens of the lab's own vocabulary, ids 0 to 4.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn tokenizer_err(e: impl std::fmt::Display) -> ProgramError {
    ProgramError::Other(format!("tokenizer: {e}"))
}

/// The words of a sentence as the lab's own tokenizer splits them: BERT
/// normalisation (lowercase, control characters removed, CJK characters
/// split) and BERT pre-tokenisation (whitespace and punctuation).
pub fn words(text: &str) -> Result<Vec<String>, ProgramError> {
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::{
        NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
        PreTokenizer,
    };
    let mut n = NormalizedString::from(text);
    BertNormalizer::new(true, true, None, true)
        .normalize(&mut n)
        .map_err(tokenizer_err)?;
    let mut p = PreTokenizedString::from(n);
    BertPreTokenizer
        .pre_tokenize(&mut p)
        .map_err(tokenizer_err)?;
    Ok(
        p.get_splits(OffsetReferential::Normalized, OffsetType::Byte)
            .into_iter()
            .map(|(w, _, _)| w.to_string())
            .collect(),
    )
}

/// A word-level Hugging Face `tokenizer.json` over `texts`: the special
/// tokens, then the most frequent words seen at least `min_count` times (ties
/// in word order) up to `max_vocab` entries; BERT normalisation and
/// pre-tokenisation; `[CLS] … [SEP]` around each sentence.
pub fn build_vocabulary(
    texts: &[String],
    max_vocab: usize,
    min_count: usize,
) -> Result<serde_json::Value, ProgramError> {
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in texts {
        for w in words(t)? {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(w, c)| *c >= min_count.max(1) && !SPECIAL_TOKENS.contains(&w.as_str()))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert((*tok).to_string(), id.into());
        added.push(serde_json::json!({
            "id": id, "content": tok, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        }));
    }
    for (w, _) in ranked
        .into_iter()
        .take(max_vocab.saturating_sub(SPECIAL_TOKENS.len()))
    {
        let id = vocab.len();
        vocab.insert(w, id.into());
    }
    let json = |v: serde_json::Result<serde_json::Value>| v.map_err(tokenizer_err);
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": json(serde_json::to_value(BertNormalizer::new(true, true, None, true)))?,
        "pre_tokenizer": json(serde_json::to_value(BertPreTokenizer))?,
        "post_processor": json(serde_json::to_value(BertProcessing::new(
            ("[SEP]".into(), 3),
            ("[CLS]".into(), 2),
        )))?,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }))
}

fn settings(lab: &Lab) -> Result<Settings, LabError> {
    let file = lab.manifest_path();
    let s: Settings = parse_settings(&lab.manifest.program.settings, &file, "program.settings")?;
    if s.labels.len() < 2 {
        return Err(LabError::invalid(
            &file,
            "program.settings.labels",
            "at least two class names",
        ));
    }
    let e = &s.encoder;
    if let Err(m) = e.config(e.vocab_size).validate() {
        return Err(LabError::invalid(&file, "program.settings.encoder", m));
    }
    if e.hidden_size > 1024 || e.layers > 12 || e.intermediate_size > 4096 {
        return Err(LabError::invalid(
            &file,
            "program.settings.encoder",
            "a small encoder (hidden_size ≤ 1024, layers ≤ 12, intermediate_size ≤ 4096)",
        ));
    }
    if !(3..=512).contains(&e.max_len) {
        return Err(LabError::invalid(
            &file,
            "program.settings.encoder.max_len",
            "between 3 and 512 tokens",
        ));
    }
    if !(SPECIAL_TOKENS.len() + 2..=50_000).contains(&e.vocab_size) {
        return Err(LabError::invalid(
            &file,
            "program.settings.encoder.vocab_size",
            "between 7 and 50000 tokens",
        ));
    }
    if !crate::lab::is_safe_relative(&e.tokenizer) {
        return Err(LabError::invalid(
            &file,
            "program.settings.encoder.tokenizer",
            "a relative path inside the lab folder",
        ));
    }
    if let Some(p) = &s.pretrained {
        if !crate::lab::is_safe_relative(&p.model) || p.model.contains('/') {
            return Err(LabError::invalid(
                &file,
                "program.settings.pretrained.model",
                "a folder name under the models folder",
            ));
        }
        if !(3..=512).contains(&p.max_len) {
            return Err(LabError::invalid(
                &file,
                "program.settings.pretrained.max_len",
                "between 3 and 512 tokens",
            ));
        }
        if !(p.baseline.is_finite() && p.target.is_finite() && p.target > p.baseline) {
            return Err(LabError::invalid(
                &file,
                "program.settings.pretrained.target",
                "finite baseline and target with target > baseline",
            ));
        }
    }
    Ok(s)
}

fn base_build(lab: &Lab) -> Result<(BaseBuild, u64), LabError> {
    let file = lab.manifest_path();
    let base = lab.manifest.base.as_ref().ok_or_else(|| {
        LabError::invalid(&file, "base", "a [base] table (the lab's own encoder)")
    })?;
    let b: BaseBuild = parse_settings(&base.build, &file, "base.build")?;
    if b.classes.len() < 2 {
        return Err(LabError::invalid(
            &file,
            "base.build.classes",
            "at least two class names",
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

/// Reads JSON lines with a `text` field and the label in `field` (a class
/// index or a class name from `classes`).
pub fn load_jsonl(path: &Path, field: &str, classes: &[String]) -> Result<TextSet, ProgramError> {
    let data_err = |message: String| ProgramError::Data {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| data_err(e.to_string()))?;
    let mut set = TextSet::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| data_err(format!("line {n}: {e}")))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| data_err(format!("line {n}: no string field \"text\"")))?;
        let label = match v.get(field) {
            Some(serde_json::Value::Number(x)) => x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .filter(|x| *x < classes.len()),
            Some(serde_json::Value::String(s)) => classes.iter().position(|c| c == s),
            _ => None,
        }
        .ok_or_else(|| {
            data_err(format!(
                "line {n}: field \"{field}\" must be a class index below {} or one of {classes:?}",
                classes.len()
            ))
        })?;
        set.texts.push(t.to_string());
        set.labels.push(label);
    }
    if set.is_empty() {
        return Err(data_err("no sentences".into()));
    }
    Ok(set)
}

/// Names and shapes of tensors, sorted by name.
fn specs_of(tensors: &HashMap<String, Tensor>) -> Vec<TensorSpec> {
    let mut out: Vec<TensorSpec> = tensors
        .iter()
        .map(|(k, t)| TensorSpec::f32(k.clone(), t.dims()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Freshly initialised encoder tensors (seeded), as BERT initialises them.
pub fn random_encoder(
    cfg: &BertConfig,
    seed: u64,
) -> Result<HashMap<String, Tensor>, ProgramError> {
    let varmap = VarMap::new();
    BertModel::new(
        seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu),
        cfg,
    )?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ProgramError::Other("variable map lock poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// The shared model's folder, when the lab names one and it is installed.
fn installed_pretrained(lab: &Lab, s: &Settings) -> Option<(PathBuf, PretrainedSettings)> {
    let p = s.pretrained.as_ref()?;
    let dir = lab.models_dir()?.join(&p.model);
    dir.join("model.safetensors")
        .is_file()
        .then(|| (dir, p.clone()))
}

/// The lab's own tokenizer (written by `build-base`).
fn own_tokenizer(lab: &Lab, s: &Settings) -> Result<BertTokenizer, ProgramError> {
    let path = lab.dir().join(&s.encoder.tokenizer);
    if !path.is_file() {
        return Err(ProgramError::Other(format!(
            "vocabulary {} is missing; run `sanhak lab build-base {}`",
            path.display(),
            lab.id()
        )));
    }
    BertTokenizer::from_file(&path, s.encoder.max_len)
        .map_err(|e| ProgramError::Other(format!("vocabulary {}: {e}", path.display())))
}

/// The config of a lab's own encoder (its vocabulary must be built).
pub fn own_encoder_config(lab: &Lab) -> Result<BertConfig, ProgramError> {
    let s = settings(lab)?;
    Ok(s.encoder.config(own_tokenizer(lab, &s)?.vocab_size()))
}

/// The lab's own encoder's tensor specs (from its config and vocabulary).
fn own_encoder_spec(s: &Settings, vocab_size: usize) -> Result<Vec<TensorSpec>, ProgramError> {
    Ok(specs_of(&random_encoder(&s.encoder.config(vocab_size), 0)?))
}

/// Loads the encoder the lab uses here (see the module docs).
pub fn backbone(lab: &Lab) -> Result<Backbone, ProgramError> {
    let s = settings(lab)?;
    if let Some((dir, p)) = installed_pretrained(lab, &s) {
        let hf = HfBert::load(&dir, p.max_len, &Device::Cpu)
            .map_err(|e| ProgramError::Other(format!("pretrained model {}: {e}", dir.display())))?;
        return Ok(Backbone {
            name: p.model.clone(),
            config: hf.config,
            weights: hf.weights,
            tokens: hf.tokenizer,
        });
    }
    let path = lab.base_checkpoint_path()?;
    if !path.is_file() {
        return Err(ProgramError::Other(format!(
            "base checkpoint {} is missing; run `sanhak lab build-base {}`",
            path.display(),
            lab.id()
        )));
    }
    let tokens = own_tokenizer(lab, &s)?;
    let vocab = tokens.vocab_size();
    let weights = load_checked(&path, &own_encoder_spec(&s, vocab)?, &Device::Cpu)
        .map_err(|e| ProgramError::Other(format!("base checkpoint {}: {e}", path.display())))?;
    Ok(Backbone {
        name: OWN_ENCODER.into(),
        config: s.encoder.config(vocab),
        weights,
        tokens,
    })
}

/// Token ids of every sentence.
fn encode_all(tokens: &BertTokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>, ProgramError> {
    texts
        .iter()
        .map(|t| tokens.encode(t).map_err(tokenizer_err))
        .collect()
}

/// Runs `f` over `ids` in batches of similar length (less padding), built
/// on `dev`, and returns its per-sentence rows in the original order.
fn batched_rows(
    ids: &[Vec<u32>],
    pad_id: u32,
    dev: &Device,
    mut f: impl FnMut(&EncodedBatch) -> candle_core::Result<Tensor>,
) -> Result<Tensor, ProgramError> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut parts = Vec::new();
    for chunk in order.chunks(EVAL_BATCH) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let batch = EncodedBatch::from_ids(&rows, pad_id, dev)
            .map_err(|e| ProgramError::Other(e.to_string()))?;
        parts.push(f(&batch)?);
    }
    let sorted = Tensor::cat(&parts, 0)?;
    // Row r of `sorted` is sentence order[r]; put sentence i back at row i.
    let mut inverse = vec![0u32; ids.len()];
    for (r, &i) in order.iter().enumerate() {
        inverse[i] = r as u32;
    }
    let inverse = Tensor::from_vec(inverse, ids.len(), dev)?;
    Ok(sorted.index_select(&inverse, 0)?)
}

/// Predicted class of every sentence (evaluation mode), with the batches on
/// `dev` (where the model is).
fn predict(
    model: &BertClassifier,
    ids: &[Vec<u32>],
    pad_id: u32,
    dev: &Device,
) -> Result<Vec<usize>, ProgramError> {
    let logits = batched_rows(ids, pad_id, dev, |b| model.forward(b))?;
    argmax_rows(&logits)
}

fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>, ProgramError> {
    Ok(logits
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|x| x as usize)
        .collect())
}

fn accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    let correct = pred.iter().zip(labels).filter(|(a, b)| a == b).count();
    correct as f64 / labels.len().max(1) as f64
}

fn labels_tensor(labels: &[usize], idx: &[usize], dev: &Device) -> Result<Tensor, ProgramError> {
    let v: Vec<u32> = idx.iter().map(|&i| labels[i] as u32).collect();
    Ok(Tensor::from_vec(v, idx.len(), dev)?)
}

/// A detached copy of every variable of `varmap` (the trainable state).
fn snapshot_varmap(varmap: &VarMap) -> Result<HashMap<String, Tensor>, ProgramError> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ProgramError::Other("variable map lock poisoned".into()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
        .collect()
}

/// What one fine-tuning run needs.
struct Job<'a> {
    backbone: &'a Backbone,
    labels: usize,
    train: &'a TextSet,
    valid: &'a TextSet,
    config: &'a TrainConfig,
    total_steps: u64,
    warmup: u64,
    eval_every: u64,
    /// Where to train.
    device: &'a Device,
}

/// Head-only training on pooled features computed once.
struct HeadTrainee<'a> {
    model: BertClassifier,
    varmap: VarMap,
    train_x: Tensor,
    train_labels: &'a [usize],
    valid_x: Tensor,
    valid_labels: &'a [usize],
    sampler: BatchSampler,
    rng: StdRng,
}

impl Trainee for HeadTrainee<'_> {
    type Snapshot = HashMap<String, Tensor>;

    fn batch_loss(&mut self) -> Result<Tensor, ProgramError> {
        let idx = self.sampler.next_batch();
        let dev = self.train_x.device();
        let idx_t = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            dev,
        )?;
        let x = self.train_x.index_select(&idx_t, 0)?;
        let logits = self.model.head_t(&x, Some(&mut self.rng))?;
        Ok(candle_nn::loss::cross_entropy(
            &logits,
            &labels_tensor(self.train_labels, &idx, dev)?,
        )?)
    }

    fn validate(&mut self) -> Result<f64, ProgramError> {
        let pred = argmax_rows(&self.model.head_t(&self.valid_x, None)?)?;
        Ok(accuracy(&pred, self.valid_labels))
    }

    fn snapshot(&self) -> Result<Self::Snapshot, ProgramError> {
        snapshot_varmap(&self.varmap)
    }
}

/// Full or LoRA fine-tuning: the encoder runs on every batch.
struct EncoderTrainee<'a> {
    model: BertClassifier,
    varmap: VarMap,
    pad_id: u32,
    train_ids: Vec<Vec<u32>>,
    train_labels: &'a [usize],
    valid_ids: Vec<Vec<u32>>,
    valid_labels: &'a [usize],
    sampler: BatchSampler,
    rng: StdRng,
    device: &'a Device,
}

impl Trainee for EncoderTrainee<'_> {
    type Snapshot = HashMap<String, Tensor>;

    fn batch_loss(&mut self) -> Result<Tensor, ProgramError> {
        let idx = self.sampler.next_batch();
        let rows: Vec<Vec<u32>> = idx.iter().map(|&i| self.train_ids[i].clone()).collect();
        let batch = EncodedBatch::from_ids(&rows, self.pad_id, self.device)
            .map_err(|e| ProgramError::Other(e.to_string()))?;
        Ok(self.model.loss_t(
            &batch,
            &labels_tensor(self.train_labels, &idx, self.device)?,
            Some(&mut self.rng),
        )?)
    }

    fn validate(&mut self) -> Result<f64, ProgramError> {
        let pred = predict(&self.model, &self.valid_ids, self.pad_id, self.device)?;
        Ok(accuracy(&pred, self.valid_labels))
    }

    fn snapshot(&self) -> Result<Self::Snapshot, ProgramError> {
        snapshot_varmap(&self.varmap)
    }
}

/// The training mode a config asks for.
fn mode_of(config: &TrainConfig) -> FineTuneMode {
    match &config.lora {
        Some(l) => FineTuneMode::Lora(l.clone()),
        None if config.frozen.iter().any(|f| f == "encoder") => FineTuneMode::HeadOnly,
        None => FineTuneMode::Full,
    }
}

/// Fine-tune a classifier over `job.backbone`; returns the exported
/// classifier (adapters merged), its validation accuracy and the steps run.
fn finetune(
    job: &Job<'_>,
    sink: &mut dyn EventSink,
) -> Result<Fitted<BTreeMap<String, Tensor>>, ProgramError> {
    let cfg = job.config;
    let mut model_cfg = job.backbone.config.clone();
    model_cfg.hidden_dropout_prob = cfg.dropout;
    model_cfg.attention_probs_dropout_prob = cfg.dropout;
    let mode = mode_of(cfg);
    let (model, varmap) = build_classifier(
        &job.backbone.weights,
        &model_cfg,
        job.labels,
        &mode,
        None,
        cfg.seed,
        job.device,
    )
    .map_err(|e| ProgramError::Other(e.to_string()))?;
    let frozen_embeddings =
        matches!(mode, FineTuneMode::Full) && cfg.frozen.iter().any(|f| f == "embeddings");
    let vars: Vec<_> = vars_with_prefix(&varmap, &[])
        .map_err(|e| ProgramError::Other(e.to_string()))?
        .into_iter()
        .filter(|(name, _)| !(frozen_embeddings && name.starts_with("embeddings.")))
        .map(|(_, v)| v)
        .collect();
    let schedule = Schedule {
        kind: cfg.schedule,
        peak: cfg.learning_rate,
        warmup: job.warmup.min(job.total_steps),
        total: job.total_steps,
    };
    let mut opt = Optimizer::new(vars, cfg.weight_decay, schedule, cfg.grad_clip)?;
    let plan = FitPlan {
        program: NAME,
        metric: METRIC,
        direction: Direction::Higher,
        total_steps: job.total_steps,
        eval_every: job.eval_every,
        patience: cfg.early_stopping_patience,
        seed: cfg.seed,
    };
    sink.emit(Event::Log {
        message: format!(
            "encoder {} ({} layers, width {}), {} training",
            job.backbone.name,
            model_cfg.num_hidden_layers,
            model_cfg.hidden_size,
            match &mode {
                FineTuneMode::Full if frozen_embeddings => "full (embeddings frozen)".to_string(),
                FineTuneMode::Full => "full".to_string(),
                FineTuneMode::HeadOnly => "head-only".to_string(),
                FineTuneMode::Lora(l) => format!("LoRA rank {} on {:?}", l.rank, l.targets),
            }
        ),
    });
    let tokens = &job.backbone.tokens;
    let pad_id = tokens.pad_id();
    let train_ids = encode_all(tokens, &job.train.texts)?;
    let valid_ids = encode_all(tokens, &job.valid.texts)?;
    let sampler = BatchSampler::new(job.train.len(), cfg.batch_size, cfg.seed);
    let rng = StdRng::seed_from_u64(cfg.seed ^ 0x0d20_f0a7);
    let fitted = if matches!(mode, FineTuneMode::HeadOnly) {
        let pooled = |ids: &[Vec<u32>]| batched_rows(ids, pad_id, job.device, |b| model.pooled(b));
        let (train_x, valid_x) = (pooled(&train_ids)?, pooled(&valid_ids)?);
        let mut t = HeadTrainee {
            model,
            varmap,
            train_x,
            train_labels: &job.train.labels,
            valid_x,
            valid_labels: &job.valid.labels,
            sampler,
            rng,
        };
        fit(&mut t, &mut opt, &plan, sink)?
    } else {
        let mut t = EncoderTrainee {
            model,
            varmap,
            pad_id,
            train_ids,
            train_labels: &job.train.labels,
            valid_ids,
            valid_labels: &job.valid.labels,
            sampler,
            rng,
            device: job.device,
        };
        fit(&mut t, &mut opt, &plan, sink)?
    };
    // Rebuild from the kept trainable tensors and export the whole classifier.
    let (model, _) = build_classifier(
        &job.backbone.weights,
        &model_cfg,
        job.labels,
        &mode,
        Some(&fitted.weights),
        cfg.seed,
        job.device,
    )
    .map_err(|e| ProgramError::Other(e.to_string()))?;
    Ok(Fitted {
        weights: model.export()?,
        valid_metric: fitted.valid_metric,
        steps: fitted.steps,
    })
}

/// A classifier from exported weights (encoder + `classifier.*`).
fn classifier_from(
    backbone_config: &BertConfig,
    weights: &HashMap<String, Tensor>,
    labels: usize,
) -> Result<BertClassifier, ProgramError> {
    let (encoder, head): (HashMap<_, _>, HashMap<_, _>) = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| !k.starts_with("classifier."));
    let (model, _) = build_classifier(
        &encoder,
        backbone_config,
        labels,
        &FineTuneMode::HeadOnly,
        Some(&head),
        0,
        &Device::Cpu,
    )
    .map_err(|e| ProgramError::Other(e.to_string()))?;
    Ok(model)
}

impl SentenceClassifier {
    fn sets(&self, lab: &Lab, s: &Settings) -> Result<(TextSet, TextSet), ProgramError> {
        let load =
            |split: &str| load_jsonl(&lab.public_file(split, "sentences")?, "label", &s.labels);
        Ok((load(&s.train_split)?, load(&s.valid_split)?))
    }
}

impl Program for SentenceClassifier {
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
            lab.public_file(split, "sentences")?;
        }
        lab.hidden_file(&lab.manifest.grading.split, "sentences")?;
        let (b, _) = base_build(lab)?;
        for split in [&b.train_split, &b.valid_split] {
            lab.public_file(split, "sentences")?;
        }
        if let Some(schema) = &lab.manifest.recipe {
            let bad = |name: &str, allowed: &[&str]| -> Option<String> {
                match schema.get(name) {
                    Some(ParamSpec::Multi { choices, .. }) => choices
                        .iter()
                        .find(|c| !allowed.contains(&c.as_str()))
                        .cloned(),
                    _ => None,
                }
            };
            if let Some(c) = bad("frozen", FREEZABLE) {
                return Err(LabError::invalid(
                    &file,
                    "recipe.param (frozen).choices",
                    format!("groups from {FREEZABLE:?}, found {c:?}"),
                ));
            }
            if let Some(c) = bad("lora_targets", LORA_TARGETS) {
                return Err(LabError::invalid(
                    &file,
                    "recipe.param (lora_targets).choices",
                    format!("modules from {LORA_TARGETS:?}, found {c:?}"),
                ));
            }
        }
        Ok(())
    }

    fn variant(&self, lab: &Lab) -> Option<String> {
        let s = settings(lab).ok()?;
        installed_pretrained(lab, &s).map(|(_, p)| p.model)
    }

    fn grading(&self, lab: &Lab) -> Result<Grading, ProgramError> {
        let s = settings(lab)?;
        let mut g = lab.manifest.grading.clone();
        if let Some((_, p)) = installed_pretrained(lab, &s) {
            g.baseline = p.baseline;
            g.target = p.target;
        }
        Ok(g)
    }

    fn checkpoint_spec(&self, lab: &Lab) -> Result<Vec<TensorSpec>, ProgramError> {
        let s = settings(lab)?;
        let (mut spec, hidden) = match installed_pretrained(lab, &s) {
            Some(_) => {
                let b = backbone(lab)?;
                (specs_of(&b.weights), b.config.hidden_size)
            }
            None => (
                own_encoder_spec(&s, own_tokenizer(lab, &s)?.vocab_size())?,
                s.encoder.hidden_size,
            ),
        };
        let n = s.labels.len();
        spec.push(TensorSpec::f32("classifier.bias", &[n]));
        spec.push(TensorSpec::f32("classifier.weight", &[n, hidden]));
        spec.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(spec)
    }

    fn build_base(
        &self,
        lab: &Lab,
        opts: &RunOptions,
        sink: &mut dyn EventSink,
    ) -> Result<BaseReport, ProgramError> {
        let s = settings(lab)?;
        let (b, seed) = base_build(lab)?;
        let load = |split: &str| {
            load_jsonl(
                &lab.public_file(split, "sentences")?,
                &b.label_field,
                &b.classes,
            )
        };
        let (train, valid) = (load(&b.train_split)?, load(&b.valid_split)?);
        let config = TrainConfig {
            learning_rate: b.learning_rate,
            schedule: ScheduleKind::Cosine,
            warmup_steps: b.steps / 10,
            budget: Budget::Steps(b.steps),
            batch_size: b.batch_size,
            weight_decay: b.weight_decay,
            grad_clip: Some(1.0),
            seed,
            dropout: 0.1,
            ..TrainConfig::default()
        };
        let total = scale_steps(b.steps, opts.step_scale);
        let device = opts.device.open()?;
        // The vocabulary first: the most frequent words of the base split.
        let vocab_json = build_vocabulary(&train.texts, s.encoder.vocab_size, s.encoder.min_count)?;
        let vocab_path = lab.dir().join(&s.encoder.tokenizer);
        let text = serde_json::to_string_pretty(&vocab_json).map_err(tokenizer_err)?;
        if let Some(parent) = vocab_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ProgramError::Data {
                path: parent.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        std::fs::write(&vocab_path, text + "\n").map_err(|e| ProgramError::Data {
            path: vocab_path.clone(),
            message: e.to_string(),
        })?;
        let tokens = own_tokenizer(lab, &s)?;
        let model_config = s.encoder.config(tokens.vocab_size());
        sink.emit(Event::Log {
            message: format!(
                "vocabulary of {} tokens written to {}",
                tokens.vocab_size(),
                vocab_path.display()
            ),
        });
        let backbone = Backbone {
            name: OWN_ENCODER.into(),
            weights: random_encoder(&model_config, seed)?,
            config: model_config,
            tokens,
        };
        let job = Job {
            backbone: &backbone,
            labels: b.classes.len(),
            train: &train,
            valid: &valid,
            config: &config,
            total_steps: total,
            warmup: scale_steps(config.warmup_steps, opts.step_scale).min(total),
            eval_every: (total / 5).max(1),
            device: &device,
        };
        let fitted = finetune(&job, sink)?;
        let encoder: BTreeMap<String, Tensor> = fitted
            .weights
            .into_iter()
            .filter(|(k, _)| !k.starts_with("classifier."))
            .collect();
        let path = lab.base_checkpoint_path()?;
        let bytes = save_checkpoint(&encoder, &path)?;
        sink.emit(Event::Checkpoint {
            path: path.display().to_string(),
            bytes,
        });
        Ok(BaseReport {
            checkpoint: path,
            bytes,
            valid_metric: fitted.valid_metric.unwrap_or(f64::NAN),
            steps: fitted.steps,
        })
    }

    fn initial_weights(
        &self,
        lab: &Lab,
        seed: u64,
    ) -> Result<HashMap<String, Tensor>, ProgramError> {
        let s = settings(lab)?;
        let b = backbone(lab)?;
        let (model, _) = build_classifier(
            &b.weights,
            &b.config,
            s.labels.len(),
            &FineTuneMode::HeadOnly,
            None,
            seed,
            &Device::Cpu,
        )
        .map_err(|e| ProgramError::Other(e.to_string()))?;
        Ok(model.export()?.into_iter().collect())
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
        if let Some(l) = &config.lora {
            check_lora(l)?;
        }
        let mut record = RunRecord::start();
        let backbone = backbone(lab)?;
        let (train, valid) = self.sets(lab, &s)?;
        let total = config.total_steps(train.len(), opts.step_scale);
        let device = opts.device.open()?;
        let job = Job {
            backbone: &backbone,
            labels: s.labels.len(),
            train: &train,
            valid: &valid,
            config,
            total_steps: total,
            warmup: scale_steps(config.warmup_steps, opts.step_scale).min(total),
            eval_every: scale_steps(config.eval_every, opts.step_scale),
            device: &device,
        };
        let fitted = {
            let mut tee = TeeSink {
                first: sink,
                second: &mut record.events,
            };
            finetune(&job, &mut tee)?
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
        let path = if hidden {
            lab.hidden_file(split, "sentences")?
        } else {
            lab.public_file(split, "sentences")?
        };
        let set = load_jsonl(&path, "label", &s.labels)?;
        let b = backbone(lab)?;
        let model = classifier_from(&b.config, weights, s.labels.len())?;
        let ids = encode_all(&b.tokens, &set.texts)?;
        let preds = predict(&model, &ids, b.tokens.pad_id(), &Device::Cpu)?;
        let examples = preds
            .iter()
            .zip(&set.labels)
            .map(|(&p, &l)| ExampleScore {
                numerator: f64::from(u8::from(p == l)),
                denominator: 1.0,
                label: Some(l),
                predicted: Some(p),
            })
            .collect();
        Ok(Evaluation {
            examples,
            class_names: Some(s.labels.clone()),
        })
    }
}

/// LoRA settings a run can use: rank ≥ 1 and targets that name BERT modules.
fn check_lora(l: &LoraConfig) -> Result<(), ProgramError> {
    if l.targets.is_empty() {
        return Err(ProgramError::Other(
            "LoRA needs at least one target module (lora_targets)".into(),
        ));
    }
    if let Some(t) = l
        .targets
        .iter()
        .find(|t| !LORA_TARGETS.contains(&t.as_str()))
    {
        return Err(ProgramError::Other(format!(
            "unknown LoRA target {t:?} (use one of {LORA_TARGETS:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec!["negative".into(), "positive".into()]
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn labels_are_indices_or_names() {
        let (_d, p) = write(
            "{\"text\": \"good\", \"label\": 1}\n\n{\"text\": \"bad\", \"label\": \"negative\"}\n",
        );
        let set = load_jsonl(&p, "label", &classes()).unwrap();
        assert_eq!(set.texts, vec!["good", "bad"]);
        assert_eq!(set.labels, vec![1, 0]);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, want) in [
            (
                "{\"text\": \"x\", \"label\": 2}\n",
                "line 1: field \"label\"",
            ),
            (
                "{\"text\": \"x\", \"label\": 0}\n{\"label\": 0}\n",
                "line 2: no string field \"text\"",
            ),
            ("{\"text\": \"x\", \"label\": \"meh\"}\n", "line 1"),
            ("{\"text\": \"x\", \"label\": -1}\n", "line 1"),
            ("not json\n", "line 1"),
            ("\n\n", "no sentences"),
        ] {
            let (_d, p) = write(text);
            let err = load_jsonl(&p, "label", &classes()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("s.jsonl"), "the file is named: {err}");
        }
    }

    #[test]
    fn batched_rows_keep_sentence_order() {
        // Rows come back in the input order although batches are sorted by length.
        let ids: Vec<Vec<u32>> = (0..150u32)
            .map(|i| vec![1; 1 + (i as usize * 7) % 13])
            .collect();
        let rows = batched_rows(&ids, 0, &Device::Cpu, |b| {
            b.attention_mask.to_dtype(DType::F32)?.sum_keepdim(1)
        })
        .unwrap();
        let lens: Vec<f32> = rows.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = ids.iter().map(|r| r.len() as f32).collect();
        assert_eq!(lens, want);
    }

    #[test]
    fn modes_follow_the_recipe() {
        let mut c = TrainConfig::default();
        assert_eq!(mode_of(&c), FineTuneMode::Full);
        c.frozen = vec!["embeddings".into()];
        assert_eq!(mode_of(&c), FineTuneMode::Full);
        c.frozen.push("encoder".into());
        assert_eq!(mode_of(&c), FineTuneMode::HeadOnly);
        let l = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["query".into()],
        };
        c.lora = Some(l.clone());
        assert_eq!(mode_of(&c), FineTuneMode::Lora(l));
        let bad = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["conv1".into()],
        };
        assert!(check_lora(&bad).unwrap_err().to_string().contains("conv1"));
    }
}
