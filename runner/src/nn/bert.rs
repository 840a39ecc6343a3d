//! A BERT-family encoder on candle that loads Hugging Face folders
//! (`config.json`, `model.safetensors`, `tokenizer.json`) and trains with
//! gradients reaching every layer.
//!
//! candle-transformers' BERT is not used: its `LayerNorm` takes the fused
//! fast path, which has no backward pass. Here every layer norm is
//! `ops::layer_norm_slow` and attention uses `ops::softmax(x, D::Minus1)`.
//!
//! - [`BertModel`]: embeddings + encoder, `new(vb, cfg)` and `forward`.
//! - [`mean_pool`] and [`l2_normalize`]: sentence embeddings as
//!   sentence-transformers computes them (all-MiniLM-L6-v2: mean pooling,
//!   then normalisation).
//! - [`BertClassifier`]: mean-pooled encoder output → dropout → linear head
//!   (`classifier.weight`, `classifier.bias`).
//! - [`build_classifier`]: the three training modes of [`FineTuneMode`]:
//!   full fine-tuning (every pretrained tensor becomes a `Var`), head-only
//!   (the encoder is plain tensors, i.e. frozen) and LoRA (a frozen encoder
//!   plus adapters on the target modules). The returned `VarMap` holds exactly
//!   the trainable tensors: give its vars to the optimizer, save it as the
//!   checkpoint.
//!
//! Random initialisation (tests, models built from scratch): linear layers
//! PyTorch's default U(±1/√fan_in), embeddings N(0, 0.02²) (BERT's
//! `initializer_range`), layer norms 1 and 0.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::init::{dropout, normal_init, seeded_var_builder_tracked, varmap_from_tensors};
use super::linear::{LayerNorm, LoraSpec, Proj};
use super::lora::LoraConfig;
use super::{NnError, Result};

/// The folder name of all-MiniLM-L6-v2 under `<data_dir>/models/`.
pub const MINILM_DIR_NAME: &str = "all-MiniLM-L6-v2";

/// Where `sanhak model fetch minilm` puts the model: `<data_dir>/models/all-MiniLM-L6-v2`.
pub fn minilm_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join(MINILM_DIR_NAME)
}

/// The fields of a Hugging Face BERT `config.json` that the model uses
/// (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// A tiny configuration for tests: vocabulary 64, width 8, 2 heads,
    /// 2 layers, intermediate 16, 16 positions.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            hidden_act: "gelu".into(),
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| NnError::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| NnError::Config {
            path: path.into(),
            message,
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size ({}) must be a positive multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return Err(
                "vocab_size, num_hidden_layers and intermediate_size must be positive".into(),
            );
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        Activation::parse(&self.hidden_act)?;
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gelu" => Ok(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(format!(
                "hidden_act {other:?} is not supported (gelu, gelu_new, relu)"
            )),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

struct Layer {
    query: Proj,
    key: Proj,
    value: Proj,
    attn_out: Proj,
    attn_norm: LayerNorm,
    intermediate: Proj,
    output: Proj,
    out_norm: LayerNorm,
}

/// Embeddings and encoder of a BERT model (no pooler).
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    act: Activation,
    cfg: BertConfig,
}

fn sub<'a>(lora: Option<&LoraSpec<'a>>, name: &str) -> Option<LoraSpec<'a>> {
    lora.map(|l| l.pp(name))
}

fn maybe_dropout(x: &Tensor, p: f64, rng: Option<&mut StdRng>) -> candle_core::Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => dropout(x, p, rng),
        _ => Ok(x.clone()),
    }
}

impl BertModel {
    /// Builds the model from tensors named as in Hugging Face's `BertModel`
    /// (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...).
    pub fn new(vb: VarBuilder<'_>, cfg: &BertConfig) -> candle_core::Result<Self> {
        Self::new_with_lora(vb, cfg, None)
    }

    /// Like [`BertModel::new`], with LoRA adapters on the linear layers that
    /// `lora` targets (`query`, `key`, `value`, `attention.output.dense`,
    /// `intermediate.dense`, `output.dense`, or `dense` for all three).
    pub fn new_with_lora(
        vb: VarBuilder<'_>,
        cfg: &BertConfig,
        lora: Option<&LoraSpec<'_>>,
    ) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let evb = vb.pp("embeddings");
        let init = normal_init(0.02);
        let embeddings = Embeddings {
            word: evb
                .pp("word_embeddings")
                .get_with_hints((cfg.vocab_size, h), "weight", init)?,
            position: evb.pp("position_embeddings").get_with_hints(
                (cfg.max_position_embeddings, h),
                "weight",
                init,
            )?,
            token_type: evb.pp("token_type_embeddings").get_with_hints(
                (cfg.type_vocab_size, h),
                "weight",
                init,
            )?,
            norm: LayerNorm::new(h, eps, evb.pp("LayerNorm"))?,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let name = format!("encoder.layer.{i}");
            let lvb = vb.pp(&name);
            let ll = sub(lora, &name);
            let svb = lvb.pp("attention").pp("self");
            let sl = sub(sub(ll.as_ref(), "attention").as_ref(), "self");
            let aovb = lvb.pp("attention").pp("output");
            let aol = sub(sub(ll.as_ref(), "attention").as_ref(), "output");
            let proj =
                |vb: VarBuilder<'_>, l: Option<LoraSpec<'_>>, name: &str, i: usize, o: usize| {
                    Proj::with_lora(i, o, true, vb.pp(name), sub(l.as_ref(), name).as_ref())
                };
            layers.push(Layer {
                query: proj(svb.clone(), sl.clone(), "query", h, h)?,
                key: proj(svb.clone(), sl.clone(), "key", h, h)?,
                value: proj(svb, sl, "value", h, h)?,
                attn_out: proj(aovb.clone(), aol, "dense", h, h)?,
                attn_norm: LayerNorm::new(h, eps, aovb.pp("LayerNorm"))?,
                intermediate: proj(
                    lvb.pp("intermediate"),
                    sub(ll.as_ref(), "intermediate"),
                    "dense",
                    h,
                    cfg.intermediate_size,
                )?,
                output: proj(
                    lvb.pp("output"),
                    sub(ll.as_ref(), "output"),
                    "dense",
                    cfg.intermediate_size,
                    h,
                )?,
                out_norm: LayerNorm::new(h, eps, lvb.pp("output").pp("LayerNorm"))?,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            act: Activation::parse(&cfg.hidden_act).map_err(candle_core::Error::Msg)?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Hidden states `[B, T, H]` for `input_ids` `[B, T]` (u32), optional
    /// `token_type_ids` `[B, T]` (zeros when absent) and `attention_mask`
    /// `[B, T]` (1 for tokens, 0 for padding; any dtype). Evaluation mode.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.forward_t(input_ids, token_type_ids, attention_mask, None)
    }

    /// [`BertModel::forward`]; with `dropout_rng` given, the config's dropout
    /// probabilities apply (training mode).
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        mut dropout_rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence length {t} exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let h = self.cfg.hidden_size;
        let e = &self.embeddings;
        let words = e
            .word
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let types = match token_type_ids {
            Some(tt) => e
                .token_type
                .index_select(&tt.flatten_all()?, 0)?
                .reshape((b, t, h))?,
            None => e
                .token_type
                .narrow(0, 0, 1)?
                .unsqueeze(0)?
                .broadcast_as((b, t, h))?,
        };
        let pos = e.position.narrow(0, 0, t)?;
        let x = words.add(&types)?.broadcast_add(&pos)?;
        let mut x = e.norm.forward(&x)?;
        x = maybe_dropout(&x, self.cfg.hidden_dropout_prob, dropout_rng.as_deref_mut())?;

        let dtype = x.dtype();
        // [B, 1, 1, T]: 0 for tokens, −1e9 for padding.
        let ext =
            ((attention_mask.to_dtype(dtype)?.affine(-1.0, 1.0)?) * -1e9)?.reshape((b, 1, 1, t))?;
        let heads = self.cfg.num_attention_heads;
        let d = h / heads;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
        };
        for layer in &self.layers {
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(&ext)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let probs = maybe_dropout(
                &probs,
                self.cfg.attention_probs_dropout_prob,
                dropout_rng.as_deref_mut(),
            )?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
            let a = layer.attn_out.forward(&ctx)?;
            let a = maybe_dropout(&a, self.cfg.hidden_dropout_prob, dropout_rng.as_deref_mut())?;
            let a = layer.attn_norm.forward(&(a + &x)?)?;
            let m = self.act.apply(&layer.intermediate.forward(&a)?)?;
            let m = layer.output.forward(&m)?;
            let m = maybe_dropout(&m, self.cfg.hidden_dropout_prob, dropout_rng.as_deref_mut())?;
            x = layer.out_norm.forward(&(m + a)?)?;
        }
        Ok(x)
    }
}

/// Mean of the hidden states `[B, T, H]` over the tokens where
/// `attention_mask` `[B, T]` is 1: `[B, H]`.
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    sum.broadcast_div(&count)
}

/// Each row of `x` `[B, H]` divided by its Euclidean norm.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// Sentence embeddings: mean pooling, then L2 normalisation (as
/// sentence-transformers' all-MiniLM-L6-v2).
pub fn sentence_embeddings(model: &BertModel, batch: &EncodedBatch) -> candle_core::Result<Tensor> {
    let hidden = model.forward(
        &batch.input_ids,
        Some(&batch.token_type_ids),
        &batch.attention_mask,
    )?;
    l2_normalize(&mean_pool(&hidden, &batch.attention_mask)?)
}

/// Cosine similarity of two embedding rows.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// A sentence classifier: [`BertModel`] → mean pooling → dropout → linear.
pub struct BertClassifier {
    encoder: BertModel,
    head: Proj,
    dropout: f64,
}

impl BertClassifier {
    /// The encoder from `vb_encoder` (with optional LoRA), the head
    /// (`weight` `[num_labels, H]`, `bias`) from `vb_head`.
    pub fn new(
        vb_encoder: VarBuilder<'_>,
        vb_head: VarBuilder<'_>,
        cfg: &BertConfig,
        num_labels: usize,
        lora: Option<&LoraSpec<'_>>,
    ) -> candle_core::Result<Self> {
        if num_labels < 2 {
            candle_core::bail!("a classifier needs at least 2 labels, got {num_labels}");
        }
        let encoder = BertModel::new_with_lora(vb_encoder, cfg, lora)?;
        let head = Proj::new(cfg.hidden_size, num_labels, true, vb_head)?;
        Ok(Self {
            encoder,
            head,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    pub fn encoder(&self) -> &BertModel {
        &self.encoder
    }

    /// Logits `[B, num_labels]`, evaluation mode.
    pub fn forward(&self, batch: &EncodedBatch) -> candle_core::Result<Tensor> {
        self.forward_t(batch, None)
    }

    /// Logits; with `dropout_rng`, training mode.
    pub fn forward_t(
        &self,
        batch: &EncodedBatch,
        mut dropout_rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.encoder.forward_t(
            &batch.input_ids,
            Some(&batch.token_type_ids),
            &batch.attention_mask,
            dropout_rng.as_deref_mut(),
        )?;
        let pooled = mean_pool(&hidden, &batch.attention_mask)?;
        let pooled = maybe_dropout(&pooled, self.dropout, dropout_rng)?;
        self.head.forward(&pooled)
    }

    /// The mean-pooled encoder output `[B, H]` in evaluation mode, detached.
    /// With a frozen encoder (head-only training) compute it once per
    /// sentence and train the head on it with [`BertClassifier::head_t`]:
    /// the result is the same as [`BertClassifier::forward_t`] without
    /// encoder dropout, at a fraction of the cost.
    pub fn pooled(&self, batch: &EncodedBatch) -> candle_core::Result<Tensor> {
        let hidden = self.encoder.forward(
            &batch.input_ids,
            Some(&batch.token_type_ids),
            &batch.attention_mask,
        )?;
        Ok(mean_pool(&hidden, &batch.attention_mask)?.detach())
    }

    /// Logits from pooled features `[B, H]`: dropout (with `dropout_rng`),
    /// then the linear head.
    pub fn head_t(
        &self,
        pooled: &Tensor,
        dropout_rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        self.head
            .forward(&maybe_dropout(pooled, self.dropout, dropout_rng)?)
    }

    /// Every tensor of the model as a plain classifier would store it:
    /// encoder tensors named as in Hugging Face's `BertModel` (LoRA adapters
    /// merged into their base weights) and `classifier.weight`/`classifier.bias`.
    /// All tensors are detached copies.
    pub fn export(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        let e = &self.encoder.embeddings;
        out.insert("embeddings.word_embeddings.weight".into(), snap(&e.word)?);
        out.insert(
            "embeddings.position_embeddings.weight".into(),
            snap(&e.position)?,
        );
        out.insert(
            "embeddings.token_type_embeddings.weight".into(),
            snap(&e.token_type)?,
        );
        put_norm(&mut out, "embeddings.LayerNorm", &e.norm)?;
        for (i, l) in self.encoder.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            put_proj(&mut out, &format!("{p}.attention.self.query"), &l.query)?;
            put_proj(&mut out, &format!("{p}.attention.self.key"), &l.key)?;
            put_proj(&mut out, &format!("{p}.attention.self.value"), &l.value)?;
            put_proj(
                &mut out,
                &format!("{p}.attention.output.dense"),
                &l.attn_out,
            )?;
            put_norm(
                &mut out,
                &format!("{p}.attention.output.LayerNorm"),
                &l.attn_norm,
            )?;
            put_proj(
                &mut out,
                &format!("{p}.intermediate.dense"),
                &l.intermediate,
            )?;
            put_proj(&mut out, &format!("{p}.output.dense"), &l.output)?;
            put_norm(&mut out, &format!("{p}.output.LayerNorm"), &l.out_norm)?;
        }
        put_proj(&mut out, "classifier", &self.head)?;
        Ok(out)
    }

    /// Mean cross-entropy against `labels` `[B]` (u32).
    pub fn loss_t(
        &self,
        batch: &EncodedBatch,
        labels: &Tensor,
        dropout_rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(&self.forward_t(batch, dropout_rng)?, labels)
    }
}

/// A copy with its own storage (a `Var` keeps changing in place) and no graph.
fn snap(t: &Tensor) -> candle_core::Result<Tensor> {
    Ok(t.copy()?.detach())
}

fn put_proj(out: &mut BTreeMap<String, Tensor>, path: &str, p: &Proj) -> candle_core::Result<()> {
    out.insert(format!("{path}.weight"), snap(&p.merged_weight()?)?);
    if let Some(b) = p.bias() {
        out.insert(format!("{path}.bias"), snap(b)?);
    }
    Ok(())
}

fn put_norm(
    out: &mut BTreeMap<String, Tensor>,
    path: &str,
    n: &LayerNorm,
) -> candle_core::Result<()> {
    out.insert(format!("{path}.weight"), snap(n.weight())?);
    out.insert(format!("{path}.bias"), snap(n.bias())?);
    Ok(())
}

/// Which parameters fine-tuning trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum FineTuneMode {
    /// Every encoder tensor and the head.
    Full,
    /// The head only; the encoder is frozen (plain tensors).
    HeadOnly,
    /// LoRA adapters on the target modules, and the head; the encoder's own
    /// weights are frozen.
    Lora(LoraConfig),
}

/// Builds a classifier over `pretrained` encoder tensors (see
/// [`load_weights`]) for `mode`. Returns the model and the `VarMap` of
/// exactly its trainable tensors (`classifier.*`; plus every encoder tensor in
/// full mode; plus `*.lora_a`/`*.lora_b` in LoRA mode).
///
/// New tensors (the head, the adapters) are drawn from `seed`. With
/// `checkpoint` given (a grader reloading a submission), the trainable tensors
/// come from it instead, and it must name exactly the trainable tensors with
/// the right shapes and dtypes — anything missing or extra is an error.
pub fn build_classifier(
    pretrained: &HashMap<String, Tensor>,
    cfg: &BertConfig,
    num_labels: usize,
    mode: &FineTuneMode,
    checkpoint: Option<&HashMap<String, Tensor>>,
    seed: u64,
    device: &Device,
) -> Result<(BertClassifier, VarMap)> {
    let dtype = DType::F32;
    let frozen = || VarBuilder::from_tensors(pretrained.clone(), dtype, device);
    let varmap = match (mode, checkpoint) {
        (FineTuneMode::Full, None) => varmap_from_tensors(pretrained, device)?,
        (_, Some(ck)) => varmap_from_tensors(ck, device)?,
        (_, None) => VarMap::new(),
    };
    let (vb, used) = seeded_var_builder_tracked(&varmap, seed, dtype, device);
    let model = match mode {
        FineTuneMode::Full => {
            BertClassifier::new(vb.clone(), vb.pp("classifier"), cfg, num_labels, None)?
        }
        FineTuneMode::HeadOnly => {
            BertClassifier::new(frozen(), vb.pp("classifier"), cfg, num_labels, None)?
        }
        FineTuneMode::Lora(lcfg) => {
            if lcfg.rank == 0 {
                return Err(NnError::Invalid("LoRA rank must be at least 1".into()));
            }
            let spec = LoraSpec::new(lcfg, vb.clone());
            let model =
                BertClassifier::new(frozen(), vb.pp("classifier"), cfg, num_labels, Some(&spec))?;
            let adapted = model.encoder.layers.iter().flat_map(|l| {
                [
                    &l.query,
                    &l.key,
                    &l.value,
                    &l.attn_out,
                    &l.intermediate,
                    &l.output,
                ]
            });
            if !adapted.into_iter().any(Proj::is_lora) {
                return Err(NnError::Invalid(format!(
                    "LoRA targets {:?} match no module (use query, key, value, attention.output.dense, intermediate.dense, output.dense or dense)",
                    lcfg.targets
                )));
            }
            model
        }
    };
    if let Some(ck) = checkpoint {
        let have = used.names();
        let given: BTreeSet<String> = ck.keys().cloned().collect();
        let missing: Vec<_> = have.difference(&given).collect();
        let extra: Vec<_> = given.difference(&have).collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(NnError::Weights(format!(
                "checkpoint does not match the model: missing {missing:?}, unexpected {extra:?}"
            )));
        }
    }
    Ok((model, varmap))
}

/// Reads a BERT `model.safetensors` as F32 tensors named as in
/// [`BertModel`]: a leading `bert.` is removed, legacy `gamma`/`beta` become
/// `weight`/`bias`, and tensors the encoder does not use
/// (`embeddings.position_ids`, `pooler.*`, `cls.*`, heads) are dropped.
pub fn load_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(NnError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let raw = candle_core::safetensors::load(path, device)
        .map_err(|e| NnError::Weights(format!("{}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (name, t) in raw {
        let name = name.strip_prefix("bert.").unwrap_or(&name).to_string();
        if !(name.starts_with("embeddings.") || name.starts_with("encoder."))
            || name == "embeddings.position_ids"
        {
            continue;
        }
        let name = if let Some(p) = name.strip_suffix(".gamma") {
            format!("{p}.weight")
        } else if let Some(p) = name.strip_suffix(".beta") {
            format!("{p}.bias")
        } else {
            name
        };
        out.insert(name, t.to_dtype(DType::F32)?);
    }
    if out.is_empty() {
        return Err(NnError::Weights(format!(
            "{}: no BERT tensors found",
            path.display()
        )));
    }
    Ok(out)
}

/// A tokenized batch, padded to its longest sequence.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// `[B, T]` u32, zeros for single sentences.
    pub token_type_ids: Tensor,
    /// `[B, T]` u32: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
}

impl EncodedBatch {
    /// A batch from token ids already split per sentence (padded with
    /// `pad_id` on the right).
    pub fn from_ids(ids: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let b = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || t == 0 {
            return Err(NnError::Invalid("an empty batch".into()));
        }
        let mut input = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for row in ids {
            input.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, t - row.len())),
            );
            mask.extend(
                std::iter::repeat_n(1u32, row.len()).chain(std::iter::repeat_n(0, t - row.len())),
            );
        }
        Ok(Self {
            input_ids: Tensor::from_vec(input, (b, t), device)?,
            token_type_ids: Tensor::zeros((b, t), DType::U32, device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
        })
    }
}

/// A Hugging Face `tokenizer.json` (WordPiece for BERT), truncating to
/// `max_len` tokens including `[CLS]` and `[SEP]`.
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
}

impl BertTokenizer {
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(NnError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| NnError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len.max(2),
                ..Default::default()
            }))
            .map_err(|e| NnError::Tokenizer(e.to_string()))?;
        Ok(Self { inner, pad_id })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of token ids, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of one sentence, with special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| NnError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A padded batch of sentences.
    pub fn encode_batch(&self, texts: &[&str], device: &Device) -> Result<EncodedBatch> {
        let ids = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        EncodedBatch::from_ids(&ids, self.pad_id, device)
    }
}

/// Byte-level input ids, for a small encoder that Sanhak trains itself when
/// no tokenizer file is at hand: 0 is `[PAD]`, 1 `[CLS]`, 2 `[SEP]`, and byte
/// `b` is `b + 3` (use [`BYTE_BERT_VOCAB`] as the config's `vocab_size`).
pub const BYTE_BERT_VOCAB: usize = 256 + 3;
const BYTE_CLS: u32 = 1;
const BYTE_SEP: u32 = 2;

/// `[CLS]`, the first `max_len − 2` UTF-8 bytes of `text` (each + 3), `[SEP]`.
pub fn encode_bytes(text: &str, max_len: usize) -> Vec<u32> {
    let keep = max_len.saturating_sub(2);
    std::iter::once(BYTE_CLS)
        .chain(text.bytes().take(keep).map(|b| u32::from(b) + 3))
        .chain(std::iter::once(BYTE_SEP))
        .collect()
}

/// How sentences become ids: a Hugging Face WordPiece tokenizer, or bytes.
pub enum TextEncoder {
    WordPiece(Box<BertTokenizer>),
    Bytes { max_len: usize },
}

impl TextEncoder {
    /// A padded batch of sentences.
    pub fn encode_batch(&self, texts: &[&str], device: &Device) -> Result<EncodedBatch> {
        match self {
            TextEncoder::WordPiece(t) => t.encode_batch(texts, device),
            TextEncoder::Bytes { max_len } => {
                let ids: Vec<Vec<u32>> = texts.iter().map(|t| encode_bytes(t, *max_len)).collect();
                EncodedBatch::from_ids(&ids, 0, device)
            }
        }
    }
}

/// A Hugging Face BERT folder loaded: config, encoder tensors and tokenizer.
pub struct HfBert {
    pub config: BertConfig,
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: BertTokenizer,
}

impl HfBert {
    /// Loads `dir/config.json`, `dir/model.safetensors` and
    /// `dir/tokenizer.json`; sequences are truncated to `max_len` tokens
    /// (at most `max_position_embeddings`).
    pub fn load(dir: &Path, max_len: usize, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = load_weights(&dir.join("model.safetensors"), device)?;
        let tokenizer = BertTokenizer::from_file(
            &dir.join("tokenizer.json"),
            max_len.min(config.max_position_embeddings),
        )?;
        Ok(Self {
            config,
            weights,
            tokenizer,
        })
    }

    /// A frozen encoder over the loaded weights (for embeddings).
    pub fn encoder(&self, device: &Device) -> Result<BertModel> {
        let vb = VarBuilder::from_tensors(self.weights.clone(), DType::F32, device);
        Ok(BertModel::new(vb, &self.config)?)
    }

    /// Normalised sentence embeddings `[N, H]` of `texts`.
    pub fn embed(&self, model: &BertModel, texts: &[&str], device: &Device) -> Result<Tensor> {
        let batch = self.tokenizer.encode_batch(texts, device)?;
        Ok(sentence_embeddings(model, &batch)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::check_all;
    use crate::nn::init::{seeded_var_builder, vars_with_prefix};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use rand::SeedableRng;

    fn lock_err() -> candle_core::Error {
        candle_core::Error::Msg("lock".into())
    }

    /// Random "pretrained" tensors for the tiny config.
    fn pretrained(dtype: DType) -> Result<HashMap<String, Tensor>> {
        let vm = VarMap::new();
        BertModel::new(
            seeded_var_builder(&vm, 100, dtype, &Device::Cpu),
            &BertConfig::tiny(),
        )?;
        let data = vm.data().lock().map_err(|_| lock_err())?;
        Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect())
    }

    fn batch() -> Result<(EncodedBatch, Tensor)> {
        let ids = vec![
            vec![1, 5, 9, 2],
            vec![1, 7, 2],
            vec![1, 33, 12, 40, 2],
            vec![1, 3, 2],
        ];
        let b = EncodedBatch::from_ids(&ids, 0, &Device::Cpu)?;
        let labels = Tensor::new(&[0u32, 1, 1, 0], &Device::Cpu)?;
        Ok((b, labels))
    }

    fn set_lora_b_nonzero(vm: &VarMap) -> candle_core::Result<()> {
        for (name, var) in vm.data().lock().map_err(|_| lock_err())?.iter() {
            if name.ends_with("lora_b") {
                let n = var.elem_count();
                let v = Tensor::arange(0f64, n as f64, var.device())?
                    .affine(0.02, -0.1)?
                    .to_dtype(var.dtype())?
                    .reshape(var.shape())?;
                var.set(&v)?;
            }
        }
        Ok(())
    }

    #[test]
    fn full_model_gradients_reach_every_tensor_and_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 1, DType::F64, &dev);
        let model = BertClassifier::new(
            vb.clone(),
            vb.pp("classifier"),
            &BertConfig::tiny(),
            3,
            None,
        )?;
        assert_eq!(vm.all_vars().len(), 5 + 2 * 16 + 2, "every tensor is a Var");
        let (b, labels) = batch()?;
        check_all(&vm, || model.loss_t(&b, &labels, None), 3, 1e-6, 1e-5)?;
        Ok(())
    }

    #[test]
    fn lora_gradients_reach_adapters_and_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let lcfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["query".into(), "value".into(), "output.dense".into()],
        };
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 2, DType::F64, &dev);
        let spec = LoraSpec::new(&lcfg, vb.clone());
        let frozen = VarBuilder::from_tensors(pretrained(DType::F64)?, DType::F64, &dev);
        let model = BertClassifier::new(
            frozen,
            vb.pp("classifier"),
            &BertConfig::tiny(),
            2,
            Some(&spec),
        )?;
        let names: Vec<String> = vars_with_prefix(&vm, &[])?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // 2 layers × (query, value, attention.output.dense, output.dense) × (A, B) + head.
        assert_eq!(names.len(), 2 * 4 * 2 + 2, "{names:?}");
        assert!(names.contains(&"encoder.layer.1.attention.output.dense.lora_a".to_string()));
        assert!(!names
            .iter()
            .any(|n| n.contains("key") || n.contains("intermediate")));
        set_lora_b_nonzero(&vm)?;
        let (b, labels) = batch()?;
        check_all(&vm, || model.loss_t(&b, &labels, None), 2, 1e-6, 1e-5)?;
        Ok(())
    }

    fn train_steps(model: &BertClassifier, vm: &VarMap, steps: usize) -> Result<(f32, f32)> {
        let (b, labels) = batch()?;
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )?;
        let mut rng = StdRng::seed_from_u64(4);
        let mut first = f32::NAN;
        let mut last = f32::NAN;
        for i in 0..steps {
            let loss = model.loss_t(&b, &labels, Some(&mut rng))?;
            last = loss.to_scalar::<f32>()?;
            if i == 0 {
                first = last;
            }
            opt.backward_step(&loss)?;
        }
        Ok((first, last))
    }

    fn snapshot(m: &HashMap<String, Tensor>) -> Result<HashMap<String, Vec<f32>>> {
        m.iter()
            .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?)))
            .collect()
    }

    #[test]
    fn modes_train_exactly_their_tensors() -> Result<()> {
        let dev = Device::Cpu;
        let pre = pretrained(DType::F32)?;
        let before = snapshot(&pre)?;
        let cfg = BertConfig::tiny();
        let lcfg = LoraConfig {
            rank: 2,
            alpha: 2.0,
            targets: vec!["query".into(), "key".into()],
        };
        for mode in [
            FineTuneMode::HeadOnly,
            FineTuneMode::Lora(lcfg),
            FineTuneMode::Full,
        ] {
            let (model, vm) = build_classifier(&pre, &cfg, 2, &mode, None, 7, &dev)?;
            let names: Vec<String> = vars_with_prefix(&vm, &[])?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            match &mode {
                FineTuneMode::HeadOnly => {
                    assert_eq!(names, ["classifier.bias", "classifier.weight"])
                }
                FineTuneMode::Lora(_) => {
                    assert_eq!(names.len(), 2 * 2 * 2 + 2, "{names:?}");
                    assert!(names.iter().all(|n| n.starts_with("classifier.")
                        || n.ends_with(".lora_a")
                        || n.ends_with(".lora_b")));
                }
                FineTuneMode::Full => assert_eq!(names.len(), pre.len() + 2),
            }
            let start = snapshot(
                &vm.data()
                    .lock()
                    .map_err(|_| lock_err())?
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                    .collect::<candle_core::Result<HashMap<_, _>>>()?,
            )?;
            let (first, last) = train_steps(&model, &vm, 30)?;
            assert!(last < first, "{mode:?}: loss {first} -> {last}");
            // The pretrained tensors themselves are never modified (full mode
            // trains copies).
            assert_eq!(
                snapshot(&pre)?,
                before,
                "{mode:?} modified the pretrained tensors"
            );
            // Every trainable tensor moved (LoRA's B starts at 0 and must leave it).
            for (name, var) in vars_with_prefix(&vm, &[])? {
                let now = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                assert_ne!(
                    Some(&now),
                    start.get(&name),
                    "{mode:?}: {name} did not train"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn lora_merge_gives_the_same_classifier() -> Result<()> {
        let dev = Device::Cpu;
        let pre = pretrained(DType::F32)?;
        let cfg = BertConfig::tiny();
        let mode = FineTuneMode::Lora(LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["dense".into(), "value".into()],
        });
        let (model, vm) = build_classifier(&pre, &cfg, 2, &mode, None, 3, &dev)?;
        train_steps(&model, &vm, 10)?;
        // Merge every adapter into the base tensors and build a plain model.
        let mut merged = pre.clone();
        for (i, layer) in model.encoder.layers.iter().enumerate() {
            let named = [
                ("attention.self.query", &layer.query),
                ("attention.self.key", &layer.key),
                ("attention.self.value", &layer.value),
                ("attention.output.dense", &layer.attn_out),
                ("intermediate.dense", &layer.intermediate),
                ("output.dense", &layer.output),
            ];
            for (n, p) in named {
                merged.insert(format!("encoder.layer.{i}.{n}.weight"), p.merged_weight()?);
            }
        }
        let head = vm.data().lock().map_err(|_| lock_err())?;
        let mut head_t = HashMap::new();
        for k in ["classifier.weight", "classifier.bias"] {
            let v = head.get(k).ok_or_else(|| NnError::Weights(k.into()))?;
            head_t.insert(k.to_string(), v.as_tensor().detach());
        }
        drop(head);
        let (plain, _) = build_classifier(
            &merged,
            &cfg,
            2,
            &FineTuneMode::HeadOnly,
            Some(&head_t),
            0,
            &dev,
        )?;
        let (b, _) = batch()?;
        let d = (model.forward(&b)? - plain.forward(&b)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "merged model differs by {d}");
        let moved = (model.forward(&b)?
            - build_classifier(
                &pre,
                &cfg,
                2,
                &FineTuneMode::HeadOnly,
                Some(&head_t),
                0,
                &dev,
            )?
            .0
            .forward(&b)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
        assert!(
            moved > 1e-4,
            "the adapters must have changed the model ({moved})"
        );
        Ok(())
    }

    #[test]
    fn export_is_a_plain_classifier_with_the_same_logits() -> Result<()> {
        let dev = Device::Cpu;
        let pre = pretrained(DType::F32)?;
        let cfg = BertConfig::tiny();
        let mode = FineTuneMode::Lora(LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["query".into(), "intermediate.dense".into()],
        });
        let (model, vm) = build_classifier(&pre, &cfg, 3, &mode, None, 5, &dev)?;
        train_steps(&model, &vm, 10)?;
        let exported = model.export()?;
        // Exactly the encoder's tensors plus the head; no adapters.
        let mut want: Vec<String> = pre.keys().cloned().collect();
        want.extend([
            "classifier.bias".to_string(),
            "classifier.weight".to_string(),
        ]);
        want.sort();
        let got: Vec<String> = exported.keys().cloned().collect();
        assert_eq!(got, want);
        let (encoder, head): (HashMap<_, _>, HashMap<_, _>) = exported
            .into_iter()
            .partition(|(k, _)| !k.starts_with("classifier."));
        let (plain, _) = build_classifier(
            &encoder,
            &cfg,
            3,
            &FineTuneMode::HeadOnly,
            Some(&head),
            0,
            &dev,
        )?;
        let (b, _) = batch()?;
        let d = (model.forward(&b)? - plain.forward(&b)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "exported classifier differs by {d}");
        // A copy: further training does not change what was exported.
        let before = plain.forward(&b)?;
        train_steps(&model, &vm, 3)?;
        let after = plain.forward(&b)?;
        assert_eq!(before.to_vec2::<f32>()?, after.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn checkpoints_reload_exactly_and_bad_ones_are_rejected() -> Result<()> {
        let dev = Device::Cpu;
        let pre = pretrained(DType::F32)?;
        let cfg = BertConfig::tiny();
        let mode = FineTuneMode::Lora(LoraConfig {
            rank: 1,
            alpha: 1.0,
            targets: vec!["query".into()],
        });
        let (model, vm) = build_classifier(&pre, &cfg, 2, &mode, None, 5, &dev)?;
        train_steps(&model, &vm, 5)?;
        let tmp = tempfile::tempdir().map_err(|e| NnError::io("tmp", e))?;
        let path = tmp.path().join("ck.safetensors");
        vm.save(&path)?;
        let ck = candle_core::safetensors::load(&path, &dev)?;
        let (again, _) = build_classifier(&pre, &cfg, 2, &mode, Some(&ck), 99, &dev)?;
        let (b, _) = batch()?;
        let d = (model.forward(&b)? - again.forward(&b)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);

        let mut missing = ck.clone();
        missing.remove("classifier.bias");
        assert!(
            matches!(build_classifier(&pre, &cfg, 2, &mode, Some(&missing), 0, &dev), Err(NnError::Weights(m)) if m.contains("classifier.bias"))
        );
        let mut extra = ck.clone();
        extra.insert("evil".into(), Tensor::zeros(1, DType::F32, &dev)?);
        assert!(
            matches!(build_classifier(&pre, &cfg, 2, &mode, Some(&extra), 0, &dev), Err(NnError::Weights(m)) if m.contains("evil"))
        );
        let mut shape = ck.clone();
        shape.insert(
            "classifier.weight".into(),
            Tensor::zeros((3, 8), DType::F32, &dev)?,
        );
        assert!(build_classifier(&pre, &cfg, 2, &mode, Some(&shape), 0, &dev).is_err());
        let mut dtype = ck;
        dtype.insert(
            "classifier.bias".into(),
            Tensor::zeros(2, DType::F64, &dev)?,
        );
        assert!(build_classifier(&pre, &cfg, 2, &mode, Some(&dtype), 0, &dev).is_err());
        let none = FineTuneMode::Lora(LoraConfig {
            rank: 1,
            alpha: 1.0,
            targets: vec!["nothing".into()],
        });
        assert!(matches!(
            build_classifier(&pre, &cfg, 2, &none, None, 0, &dev),
            Err(NnError::Invalid(_))
        ));
        Ok(())
    }

    #[test]
    fn padding_does_not_change_embeddings() -> Result<()> {
        let dev = Device::Cpu;
        let pre = pretrained(DType::F32)?;
        let model = BertModel::new(
            VarBuilder::from_tensors(pre, DType::F32, &dev),
            &BertConfig::tiny(),
        )?;
        let alone = EncodedBatch::from_ids(&[vec![1, 5, 9, 2]], 0, &dev)?;
        let padded =
            EncodedBatch::from_ids(&[vec![1, 5, 9, 2], vec![1, 4, 4, 4, 4, 4, 2]], 0, &dev)?;
        let a = sentence_embeddings(&model, &alone)?.get(0)?;
        let p = sentence_embeddings(&model, &padded)?.get(0)?;
        let d = (&a - &p)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6, "padding changed the embedding by {d}");
        let norm = a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        assert!((norm - 1.0).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn hf_names_are_normalised_and_configs_checked() -> Result<()> {
        let dev = Device::Cpu;
        let tmp = tempfile::tempdir().map_err(|e| NnError::io("tmp", e))?;
        let pre = pretrained(DType::F32)?;
        let mut hf: HashMap<String, Tensor> = pre
            .iter()
            .map(|(k, v)| {
                let k = k
                    .replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta");
                (format!("bert.{k}"), v.clone())
            })
            .collect();
        hf.insert(
            "bert.pooler.dense.weight".into(),
            Tensor::zeros((8, 8), DType::F32, &dev)?,
        );
        hf.insert(
            "cls.predictions.bias".into(),
            Tensor::zeros(64, DType::F32, &dev)?,
        );
        hf.insert(
            "bert.embeddings.position_ids".into(),
            Tensor::zeros((1, 16), DType::I64, &dev)?,
        );
        let path = tmp.path().join("model.safetensors");
        candle_core::safetensors::save(&hf, &path)?;
        let loaded = load_weights(&path, &dev)?;
        let mut a: Vec<_> = loaded.keys().cloned().collect();
        let mut b: Vec<_> = pre.keys().cloned().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);

        let cfg_path = tmp.path().join("config.json");
        std::fs::write(&cfg_path, r#"{"vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 16, "max_position_embeddings": 16}"#)
            .map_err(|e| NnError::io(&cfg_path, e))?;
        assert!(
            matches!(BertConfig::from_file(&cfg_path), Err(NnError::Config { message, .. }) if message.contains("num_attention_heads"))
        );
        std::fs::write(&cfg_path, r#"{"vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16, "model_type": "bert"}"#)
            .map_err(|e| NnError::io(&cfg_path, e))?;
        assert_eq!(BertConfig::from_file(&cfg_path)?.hidden_act, "gelu");
        assert!(load_weights(&tmp.path().join("absent.safetensors"), &dev).is_err());
        Ok(())
    }

    /// The real all-MiniLM-L6-v2. CI fetches it first (`sanhak model fetch
    /// minilm`); set `SANHAK_MINILM_DIR` to use another folder, or
    /// `SANHAK_SKIP_MINILM=1` to skip on a machine without it.
    #[test]
    fn minilm_embeddings_match_the_reference_and_rank_related_sentences_closer() -> Result<()> {
        let dir = match std::env::var_os("SANHAK_MINILM_DIR") {
            Some(d) => PathBuf::from(d),
            None => minilm_dir(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("data"),
            ),
        };
        if !dir.join("model.safetensors").is_file() {
            if std::env::var("SANHAK_SKIP_MINILM").as_deref() == Ok("1") {
                return Ok(());
            }
            panic!(
                "all-MiniLM-L6-v2 is not at {}: run `sanhak model fetch minilm` (or set \
                 SANHAK_MINILM_DIR to its folder; SANHAK_SKIP_MINILM=1 skips this test)",
                dir.display()
            );
        }
        let dev = Device::Cpu;
        let hf = HfBert::load(&dir, 256, &dev)?;
        assert_eq!(hf.config.hidden_size, 384);
        let model = hf.encoder(&dev)?;
        let sentences = [
            "A man is playing a guitar.",
            "Someone is playing an instrument.",
            "The stock market fell sharply today.",
        ];
        // Reference: runner/tests/nn_minilm_reference.py, an independent numpy
        // implementation (f64) reading the same files.
        let want_ids: [&[u32]; 3] = [
            &[101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102],
            &[101, 2619, 2003, 2652, 2019, 6602, 1012, 102],
            &[101, 1996, 4518, 3006, 3062, 9249, 2651, 1012, 102],
        ];
        let want_first8: [[f32; 8]; 3] = [
            [
                0.021664, -0.004864, -0.009649, -0.063401, -0.167494, 0.004676, 0.0806, -0.024142,
            ],
            [
                0.031437, 0.008808, 0.002505, -0.094711, -0.19351, 0.056057, 0.109608, 0.046114,
            ],
            [
                0.060455, 0.005445, 0.076566, 0.053829, -0.014793, -0.006096, -0.029377, 0.053715,
            ],
        ];
        for (s, ids) in sentences.iter().zip(want_ids) {
            assert_eq!(hf.tokenizer.encode(s)?, ids, "{s}");
        }
        // One padded batch: padding must not change the embeddings.
        let emb = hf.embed(&model, &sentences, &dev)?;
        let rows: Vec<Vec<f32>> = emb.to_vec2()?;
        for (row, want) in rows.iter().zip(want_first8) {
            for (got, want) in row.iter().zip(want) {
                assert!(
                    (got - want).abs() < 2e-5,
                    "embedding {got} vs reference {want}"
                );
            }
        }
        let related = cosine(&rows[0], &rows[1]);
        let unrelated = cosine(&rows[0], &rows[2]).max(cosine(&rows[1], &rows[2]));
        assert!(
            (related - 0.675212).abs() < 1e-4,
            "cos(guitar, instrument) = {related}"
        );
        assert!(
            related > unrelated + 0.3,
            "related {related} vs unrelated {unrelated}"
        );
        Ok(())
    }

    #[test]
    fn byte_encoding_handles_korean_and_truncates() -> Result<()> {
        let ids = encode_bytes("가a", 16);
        assert_eq!(
            ids,
            vec![1, 0xEA + 3, 0xB0 + 3, 0x80 + 3, u32::from(b'a') + 3, 2]
        );
        assert_eq!(
            encode_bytes("abcdef", 5),
            vec![1, 97 + 3, 98 + 3, 99 + 3, 2]
        );
        assert!(encode_bytes("\u{ff}", 8)
            .iter()
            .all(|&i| (i as usize) < BYTE_BERT_VOCAB));
        let b = TextEncoder::Bytes { max_len: 8 }.encode_batch(&["ab", "abcd"], &Device::Cpu)?;
        assert_eq!(b.input_ids.dims(), &[2, 6]);
        assert_eq!(
            b.attention_mask.to_vec2::<u32>()?[0],
            vec![1, 1, 1, 1, 0, 0]
        );
        Ok(())
    }

    #[test]
    fn cached_pooled_features_give_the_same_logits() -> Result<()> {
        let dev = Device::Cpu;
        let pre = pretrained(DType::F32)?;
        let (model, _) = build_classifier(
            &pre,
            &BertConfig::tiny(),
            2,
            &FineTuneMode::HeadOnly,
            None,
            1,
            &dev,
        )?;
        let (b, _) = batch()?;
        let direct = model.forward(&b)?;
        let cached = model.head_t(&model.pooled(&b)?, None)?;
        let d = (direct - cached)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        Ok(())
    }
}
