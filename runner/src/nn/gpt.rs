//! A byte-level tiny GPT: vocabulary 256 (raw UTF-8 bytes, so Korean and
//! English need no tokenizer), token plus learned position embeddings,
//! pre-norm blocks (layer norm → causal multi-head attention through
//! matmul, mask and softmax → residual; layer norm → GELU (tanh) MLP of 4×
//! width → residual), a final layer norm and a linear head without bias.
//!
//! Tensor names follow nanoGPT: `wte.weight`, `wpe.weight`,
//! `h.{i}.ln_1`, `h.{i}.attn.c_attn` (fused q, k, v), `h.{i}.attn.c_proj`,
//! `h.{i}.ln_2`, `h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`, `ln_f`,
//! `lm_head.weight`. LoRA targets name these modules (`c_attn`, `c_proj`,
//! `attn.c_proj`, `mlp.c_fc`, ...).
//!
//! Initialisation is PyTorch's default for each layer type (see
//! [`super::init`]): embeddings N(0, 1), linear layers U(±1/√fan_in),
//! layer norms 1 and 0.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::init::{dropout, normal_init};
use super::linear::{LayerNorm, LoraSpec, Proj};

/// The number of byte values: the vocabulary of a byte-level model.
pub const BYTE_VOCAB: usize = 256;

const LN_EPS: f64 = 1e-5;

/// Architecture of a [`Gpt`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size; 256 for bytes.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Width (embedding size); a multiple of `n_head`.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Context length in tokens (bytes).
    pub block_size: usize,
    /// Dropout probability after attention weights, attention output and MLP
    /// output, applied only when training.
    #[serde(default)]
    pub dropout: f64,
}

fn default_vocab() -> usize {
    BYTE_VOCAB
}

impl GptConfig {
    /// The CPU probe shapes of PERFORMANCE.md: width 256, 4 heads, 4 layers,
    /// context 128 (3.3 M parameters).
    pub fn cpu_probe() -> Self {
        Self {
            vocab_size: BYTE_VOCAB,
            n_layer: 4,
            n_embd: 256,
            n_head: 4,
            block_size: 128,
            dropout: 0.0,
        }
    }

    /// The GPU probe shapes of PERFORMANCE.md: width 384, 6 heads, 6 layers,
    /// context 256 (10.9 M parameters).
    pub fn gpu_probe() -> Self {
        Self {
            vocab_size: BYTE_VOCAB,
            n_layer: 6,
            n_embd: 384,
            n_head: 6,
            block_size: 256,
            dropout: 0.0,
        }
    }

    /// Checks that the shapes are usable.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.vocab_size == 0 || self.n_layer == 0 || self.n_embd == 0 || self.block_size == 0 {
            return Err("vocab_size, n_layer, n_embd and block_size must be positive".into());
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd ({}) must be a positive multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// The number of parameters (all tensors, no LoRA).
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        let block =
            2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
        self.vocab_size * c
            + self.block_size * c
            + self.n_layer * block
            + 2 * c
            + c * self.vocab_size
    }
}

struct Attention {
    c_attn: Proj,
    c_proj: Proj,
    n_head: usize,
}

struct Mlp {
    c_fc: Proj,
    c_proj: Proj,
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// The tiny GPT.
pub struct Gpt {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Proj,
    mask: Tensor,
    cfg: GptConfig,
}

fn sub<'a>(lora: Option<&LoraSpec<'a>>, name: &str) -> Option<LoraSpec<'a>> {
    lora.map(|l| l.pp(name))
}

impl Gpt {
    /// Builds the model from `vb` (a seeded `VarMap` builder to train from
    /// scratch, or a checkpoint's tensors).
    pub fn new(vb: VarBuilder<'_>, cfg: &GptConfig) -> Result<Self> {
        Self::new_with_lora(vb, cfg, None)
    }

    /// Like [`Gpt::new`], with LoRA adapters on the modules that `lora`
    /// targets (their base weights are then frozen).
    pub fn new_with_lora(
        vb: VarBuilder<'_>,
        cfg: &GptConfig,
        lora: Option<&LoraSpec<'_>>,
    ) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let c = cfg.n_embd;
        let wte = vb
            .pp("wte")
            .get_with_hints((cfg.vocab_size, c), "weight", normal_init(1.0))?;
        let wpe = vb
            .pp("wpe")
            .get_with_hints((cfg.block_size, c), "weight", normal_init(1.0))?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let name = format!("h.{i}");
            let bvb = vb.pp(&name);
            let bl = sub(lora, &name);
            let avb = bvb.pp("attn");
            let al = sub(bl.as_ref(), "attn");
            let mvb = bvb.pp("mlp");
            let ml = sub(bl.as_ref(), "mlp");
            blocks.push(Block {
                ln_1: LayerNorm::new(c, LN_EPS, bvb.pp("ln_1"))?,
                attn: Attention {
                    c_attn: Proj::with_lora(
                        c,
                        3 * c,
                        true,
                        avb.pp("c_attn"),
                        sub(al.as_ref(), "c_attn").as_ref(),
                    )?,
                    c_proj: Proj::with_lora(
                        c,
                        c,
                        true,
                        avb.pp("c_proj"),
                        sub(al.as_ref(), "c_proj").as_ref(),
                    )?,
                    n_head: cfg.n_head,
                },
                ln_2: LayerNorm::new(c, LN_EPS, bvb.pp("ln_2"))?,
                mlp: Mlp {
                    c_fc: Proj::with_lora(
                        c,
                        4 * c,
                        true,
                        mvb.pp("c_fc"),
                        sub(ml.as_ref(), "c_fc").as_ref(),
                    )?,
                    c_proj: Proj::with_lora(
                        4 * c,
                        c,
                        true,
                        mvb.pp("c_proj"),
                        sub(ml.as_ref(), "c_proj").as_ref(),
                    )?,
                },
            });
        }
        let ln_f = LayerNorm::new(c, LN_EPS, vb.pp("ln_f"))?;
        let lm_head = Proj::with_lora(
            c,
            cfg.vocab_size,
            false,
            vb.pp("lm_head"),
            sub(lora, "lm_head").as_ref(),
        )?;
        let mask = causal_mask(cfg.block_size, vb.dtype(), vb.device())?;
        Ok(Self {
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            mask,
            cfg: *cfg,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The device the model's weights are on (its inputs must be there too).
    pub fn device(&self) -> &Device {
        self.wte.device()
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (u32), evaluation mode.
    pub fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        self.forward_t(idx, None)
    }

    /// Logits; with `dropout_rng` given, dropout is applied (training mode).
    pub fn forward_t(&self, idx: &Tensor, mut dropout_rng: Option<&mut StdRng>) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        if t > self.cfg.block_size {
            candle_core::bail!(
                "sequence length {t} exceeds the context of {}",
                self.cfg.block_size
            );
        }
        let c = self.cfg.n_embd;
        let tok = self
            .wte
            .index_select(&idx.flatten_all()?, 0)?
            .reshape((b, t, c))?;
        let pos = self.wpe.narrow(0, 0, t)?;
        let mut x = tok.broadcast_add(&pos)?;
        let p = self.cfg.dropout;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        for block in &self.blocks {
            let h = block.ln_1.forward(&x)?;
            let a = block
                .attn
                .forward(&h, &mask, p, dropout_rng.as_deref_mut())?;
            x = (x + a)?;
            let h = block.ln_2.forward(&x)?;
            let h = block.mlp.c_fc.forward(&h)?.gelu()?;
            let h = block.mlp.c_proj.forward(&h)?;
            let h = maybe_dropout(&h, p, dropout_rng.as_deref_mut())?;
            x = (x + h)?;
        }
        let x = self.ln_f.forward(&x)?;
        self.lm_head.forward(&x)
    }

    /// Every tensor under its base name, detached, with LoRA adapters merged
    /// into their base weights: a plain checkpoint that [`Gpt::new`] loads
    /// (e.g. through `VarBuilder::from_tensors`) with the same outputs.
    pub fn merged_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        let put_ln =
            |out: &mut std::collections::HashMap<String, Tensor>, name: &str, ln: &LayerNorm| {
                out.insert(format!("{name}.weight"), ln.weight().detach());
                out.insert(format!("{name}.bias"), ln.bias().detach());
            };
        let put_proj = |out: &mut std::collections::HashMap<String, Tensor>,
                        name: &str,
                        p: &Proj|
         -> Result<()> {
            out.insert(format!("{name}.weight"), p.merged_weight()?);
            if let Some(b) = p.bias() {
                out.insert(format!("{name}.bias"), b.detach());
            }
            Ok(())
        };
        out.insert("wte.weight".into(), self.wte.detach());
        out.insert("wpe.weight".into(), self.wpe.detach());
        for (i, b) in self.blocks.iter().enumerate() {
            put_ln(&mut out, &format!("h.{i}.ln_1"), &b.ln_1);
            put_ln(&mut out, &format!("h.{i}.ln_2"), &b.ln_2);
            put_proj(&mut out, &format!("h.{i}.attn.c_attn"), &b.attn.c_attn)?;
            put_proj(&mut out, &format!("h.{i}.attn.c_proj"), &b.attn.c_proj)?;
            put_proj(&mut out, &format!("h.{i}.mlp.c_fc"), &b.mlp.c_fc)?;
            put_proj(&mut out, &format!("h.{i}.mlp.c_proj"), &b.mlp.c_proj)?;
        }
        put_ln(&mut out, "ln_f", &self.ln_f);
        put_proj(&mut out, "lm_head", &self.lm_head)?;
        Ok(out)
    }

    /// Mean cross-entropy in nats of predicting `targets` `[B, T]` from `idx`.
    pub fn loss(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.loss_t(idx, targets, None)
    }

    /// [`Gpt::loss`] with optional dropout (training mode).
    pub fn loss_t(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        dropout_rng: Option<&mut StdRng>,
    ) -> Result<Tensor> {
        let logits = self.forward_t(idx, dropout_rng)?;
        let (b, t, v) = logits.dims3()?;
        candle_nn::loss::cross_entropy(&logits.reshape((b * t, v))?, &targets.flatten_all()?)
    }

    /// Mean nats per predicted byte over `data`, read as consecutive
    /// non-overlapping windows of the context length (every byte but the
    /// first is predicted once), `batch` windows at a time.
    pub fn eval_nats_per_byte(&self, data: &[u8], batch: usize) -> Result<f64> {
        if data.len() < 2 {
            candle_core::bail!("need at least 2 bytes to evaluate");
        }
        let dev = self.wte.device();
        let t = self.cfg.block_size;
        let mut starts: Vec<(usize, usize)> = Vec::new();
        let mut s = 0;
        while s + 1 < data.len() {
            let len = t.min(data.len() - 1 - s);
            starts.push((s, len));
            s += len;
        }
        let mut total = 0f64;
        let mut count = 0usize;
        // Full windows in batches; the shorter last window on its own.
        let (full, tail): (Vec<_>, Vec<_>) = starts.into_iter().partition(|(_, len)| *len == t);
        for group in full.chunks(batch.max(1)).chain(tail.chunks(1)) {
            let len = group[0].1;
            let mut xs = Vec::with_capacity(group.len() * len);
            let mut ys = Vec::with_capacity(group.len() * len);
            for (s, _) in group {
                xs.extend(data[*s..*s + len].iter().map(|&v| u32::from(v)));
                ys.extend(data[*s + 1..*s + 1 + len].iter().map(|&v| u32::from(v)));
            }
            let x = Tensor::from_vec(xs, (group.len(), len), dev)?;
            let y = Tensor::from_vec(ys, (group.len(), len), dev)?;
            let loss = self
                .loss(&x, &y)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let n = group.len() * len;
            total += loss * n as f64;
            count += n;
        }
        Ok(total / count as f64)
    }

    /// Continues `prompt` by `max_new` bytes. `temperature` ≤ 0 is greedy;
    /// otherwise bytes are sampled from softmax(logits / temperature) with a
    /// `StdRng` seeded by `seed`. Returns only the new bytes (which need not
    /// be valid UTF-8; use `String::from_utf8_lossy`).
    pub fn generate(
        &self,
        prompt: &[u8],
        max_new: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<Vec<u8>> {
        let dev = self.wte.device();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ctx: Vec<u32> = if prompt.is_empty() {
            vec![u32::from(b'\n')]
        } else {
            prompt.iter().map(|&b| u32::from(b)).collect()
        };
        let mut out = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let start = ctx.len().saturating_sub(self.cfg.block_size);
            let window = &ctx[start..];
            let x = Tensor::from_slice(window, (1, window.len()), dev)?;
            let logits = self.forward(&x)?;
            let last: Vec<f64> = logits
                .narrow(1, window.len() - 1, 1)?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1()?;
            let next = if temperature <= 0.0 {
                argmax(&last)
            } else {
                sample_softmax(&last, temperature, &mut rng)
            };
            ctx.push(next as u32);
            out.push(u8::try_from(next).unwrap_or(b'?'));
        }
        Ok(out)
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        p: f64,
        mut rng: Option<&mut StdRng>,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let h = self.n_head;
        let d = c / h;
        let qkv = self.c_attn.forward(x)?;
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((b, t, h, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let att = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
        let att = att.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let att = maybe_dropout(&att, p, rng.as_deref_mut())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        let y = self.c_proj.forward(&y)?;
        maybe_dropout(&y, p, rng)
    }
}

fn maybe_dropout(x: &Tensor, p: f64, rng: Option<&mut StdRng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => dropout(x, p, rng),
        _ => Ok(x.clone()),
    }
}

/// `[T, T]`: 0 on and below the diagonal, −1e9 above (a large finite value,
/// so that no infinity meets a multiplication in the backward pass).
fn causal_mask(t: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (t, t), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

fn sample_softmax(logits: &[f64], temperature: f64, rng: &mut StdRng) -> usize {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits
        .iter()
        .map(|l| ((l - m) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.gen::<f64>() * total;
    for (i, wi) in w.iter().enumerate() {
        r -= wi;
        if r <= 0.0 {
            return i;
        }
    }
    w.len().saturating_sub(1)
}

/// Bits per byte from nats per byte (one token is one byte).
pub fn bits_per_byte(nats_per_byte: f64) -> f64 {
    nats_per_byte / std::f64::consts::LN_2
}

/// A training batch of `batch` random windows of `block` bytes from `data`:
/// inputs `[B, T]` and next-byte targets `[B, T]`, both u32.
pub fn random_batch(
    data: &[u8],
    batch: usize,
    block: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if data.len() < block + 1 {
        candle_core::bail!(
            "the corpus ({} bytes) is shorter than one window of {}",
            data.len(),
            block + 1
        );
    }
    let mut xs = Vec::with_capacity(batch * block);
    let mut ys = Vec::with_capacity(batch * block);
    for _ in 0..batch {
        let s = rng.gen_range(0..data.len() - block);
        xs.extend(data[s..s + block].iter().map(|&v| u32::from(v)));
        ys.extend(data[s + 1..s + block + 1].iter().map(|&v| u32::from(v)));
    }
    Ok((
        Tensor::from_vec(xs, (batch, block), device)?,
        Tensor::from_vec(ys, (batch, block), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::check_all;
    use crate::nn::init::seeded_var_builder;
    use crate::nn::lora::LoraConfig;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: BYTE_VOCAB,
            n_layer: 2,
            n_embd: 8,
            n_head: 2,
            block_size: 6,
            dropout: 0.0,
        }
    }

    fn batch(dev: &Device) -> Result<(Tensor, Tensor)> {
        let text = "한국어 and English";
        let bytes = text.as_bytes();
        let mut rng = StdRng::seed_from_u64(3);
        random_batch(bytes, 3, 6, &mut rng, dev)
    }

    #[test]
    fn param_count_matches_the_varmap() -> Result<()> {
        let cfg = GptConfig::cpu_probe();
        let vm = VarMap::new();
        Gpt::new(seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu), &cfg)?;
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, cfg.num_params());
        assert!((3_200_000..3_400_000).contains(&n), "{n}");
        Ok(())
    }

    #[test]
    fn every_parameter_gets_a_correct_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Gpt::new(seeded_var_builder(&vm, 1, DType::F64, &dev), &tiny())?;
        let (x, y) = batch(&dev)?;
        check_all(&vm, || model.loss(&x, &y), 3, 1e-6, 1e-5)
    }

    #[test]
    fn lora_gradients_reach_adapters_only() -> Result<()> {
        let dev = Device::Cpu;
        let base_vm = VarMap::new();
        Gpt::new(seeded_var_builder(&base_vm, 1, DType::F64, &dev), &tiny())?;
        let base: std::collections::HashMap<String, Tensor> = base_vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let lcfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["c_attn".into(), "mlp.c_proj".into()],
        };
        let lora_vm = VarMap::new();
        let spec = LoraSpec::new(&lcfg, seeded_var_builder(&lora_vm, 2, DType::F64, &dev));
        let model = Gpt::new_with_lora(
            VarBuilder::from_tensors(base, DType::F64, &dev),
            &tiny(),
            Some(&spec),
        )?;
        let names: Vec<String> = crate::nn::init::vars_with_prefix(&lora_vm, &[])?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names.len(), 8, "{names:?}");
        assert!(
            names.contains(&"h.1.attn.c_attn.lora_a".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"h.0.mlp.c_proj.lora_b".to_string()),
            "{names:?}"
        );
        // B = 0 gives A a zero gradient at the start; move B off zero.
        for (name, var) in lora_vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .iter()
        {
            if name.ends_with("lora_b") {
                let n = var.elem_count();
                let v = Tensor::arange(0f64, n as f64, &dev)?
                    .affine(0.01, -0.05)?
                    .reshape(var.shape())?;
                var.set(&v)?;
            }
        }
        let (x, y) = batch(&dev)?;
        check_all(&lora_vm, || model.loss(&x, &y), 2, 1e-6, 1e-5)?;

        // The merged export is a plain model with the same outputs.
        let merged = model.merged_tensors()?;
        assert_eq!(merged.len(), base_vm.all_vars().len());
        let plain = Gpt::new(VarBuilder::from_tensors(merged, DType::F64, &dev), &tiny())?;
        let d = (model.forward(&x)? - plain.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(d < 1e-10, "merged GPT differs by {d}");
        Ok(())
    }

    #[test]
    fn training_is_deterministic_and_learns_a_pattern() -> Result<()> {
        let dev = Device::Cpu;
        let text = "가나다라 abcd ".repeat(20);
        let cfg = GptConfig {
            vocab_size: BYTE_VOCAB,
            n_layer: 1,
            n_embd: 32,
            n_head: 2,
            block_size: 16,
            dropout: 0.1,
        };
        let run = || -> Result<(f64, f64, Vec<u8>)> {
            let vm = VarMap::new();
            let model = Gpt::new(seeded_var_builder(&vm, 42, DType::F32, &dev), &cfg)?;
            let before = model.eval_nats_per_byte(text.as_bytes(), 4)?;
            let mut opt = AdamW::new(
                vm.all_vars(),
                ParamsAdamW {
                    lr: 1e-2,
                    ..Default::default()
                },
            )?;
            let mut rng = StdRng::seed_from_u64(7);
            for _ in 0..150 {
                let (x, y) = random_batch(text.as_bytes(), 8, 16, &mut rng, &dev)?;
                let loss = model.loss_t(&x, &y, Some(&mut rng))?;
                opt.backward_step(&loss)?;
            }
            let after = model.eval_nats_per_byte(text.as_bytes(), 4)?;
            let sample = model.generate("가나".as_bytes(), 12, 0.0, 0)?;
            Ok((before, after, sample))
        };
        let (before, after, sample) = run()?;
        assert!(
            (before - (256f64).ln()).abs() < 2.0,
            "untrained loss {before} should be near ln 256"
        );
        assert!(
            after < 0.3,
            "a repeated 15-byte pattern must be learned: {after} nats/byte"
        );
        assert_eq!(String::from_utf8_lossy(&sample), "다라 abcd ");
        let again = run()?;
        assert_eq!((before, after, sample), again, "same seed, same run");
        Ok(())
    }

    #[test]
    fn evaluation_covers_every_byte_once() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Gpt::new(seeded_var_builder(&vm, 5, DType::F64, &dev), &tiny())?;
        // 6 + 6 + 2 predicted bytes: two full windows and a tail.
        let data = b"abcdefghijklmno";
        let got = model.eval_nats_per_byte(data, 2)?;
        let x1 = Tensor::from_vec(
            data[0..12]
                .iter()
                .map(|&b| u32::from(b))
                .collect::<Vec<_>>(),
            (2, 6),
            &dev,
        )?;
        let y1 = Tensor::from_vec(
            data[1..13]
                .iter()
                .map(|&b| u32::from(b))
                .collect::<Vec<_>>(),
            (2, 6),
            &dev,
        )?;
        let x2 = Tensor::from_vec(vec![u32::from(b'm'), u32::from(b'n')], (1, 2), &dev)?;
        let y2 = Tensor::from_vec(vec![u32::from(b'n'), u32::from(b'o')], (1, 2), &dev)?;
        let l1 = model.loss(&x1, &y1)?.to_scalar::<f64>()?;
        let l2 = model.loss(&x2, &y2)?.to_scalar::<f64>()?;
        let want = (l1 * 12.0 + l2 * 2.0) / 14.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!((bits_per_byte(std::f64::consts::LN_2 * 3.0) - 3.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn sampling_is_seeded_and_context_is_checked() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = Gpt::new(seeded_var_builder(&vm, 5, DType::F32, &dev), &tiny())?;
        let a = model.generate(b"ab", 20, 1.0, 9)?;
        assert_eq!(a, model.generate(b"ab", 20, 1.0, 9)?);
        assert_ne!(a, model.generate(b"ab", 20, 1.0, 10)?);
        let too_long = Tensor::zeros((1, 7), DType::U32, &dev)?;
        assert!(model.forward(&too_long).is_err());
        Ok(())
    }
}
