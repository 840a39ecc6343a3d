//! LoRA (Hu et al., 2021): a frozen linear layer `W` plus a trainable
//! low-rank update, `y = x Wᵀ + b + (α/r) · (x Aᵀ) Bᵀ`.
//!
//! - `A` (`lora_a`, `[r, in]`) starts U(−1/√in, 1/√in), as PEFT's
//!   Kaiming-uniform with a = √5; `B` (`lora_b`, `[out, r]`) starts at zero,
//!   so the adapted layer starts equal to the base.
//! - The base weight and bias are detached plain tensors: backprop never
//!   reaches them, whatever they were built from.
//! - [`LoraLinear::merge`] folds the adapter into one plain weight
//!   `W + (α/r) · B A` for inference or export.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::init::linear_init;
use super::linear::linear_forward;

/// Which modules get adapters, and their rank and scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank r of the update (≥ 1).
    pub rank: usize,
    /// The scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Module names or path suffixes: `query` matches
    /// `encoder.layer.3.attention.self.query`; `attention.output.dense`
    /// matches only that dense layer; `dense` matches all three BERT dense
    /// layers. A target matches a module whose path equals it or ends with
    /// `.` + target.
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    /// Whether a module at `path` (from the model root) gets an adapter.
    pub fn applies_to(&self, path: &str) -> bool {
        self.targets.iter().any(|t| {
            !t.is_empty()
                && (path == t
                    || (path.len() > t.len()
                        && path.ends_with(t.as_str())
                        && path.as_bytes()[path.len() - t.len() - 1] == b'.'))
        })
    }
}

/// A linear layer with a frozen base and a trainable low-rank adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl LoraLinear {
    /// Wraps the base `weight` (`[out, in]`) and `bias` (`[out]`), which are
    /// detached, with adapter tensors `lora_a` and `lora_b` taken from `vb`
    /// (create them in a trainable `VarMap` to train them).
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        rank: usize,
        alpha: f64,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        if rank == 0 {
            candle_core::bail!("LoRA rank must be at least 1");
        }
        let (out_dim, in_dim) = weight.dims2()?;
        let a = vb.get_with_hints((rank, in_dim), "lora_a", linear_init(in_dim))?;
        let b = vb.get_with_hints((out_dim, rank), "lora_b", candle_nn::init::ZERO)?;
        Ok(Self {
            weight: weight.detach(),
            bias: bias.map(Tensor::detach),
            a,
            b,
            scale: alpha / rank as f64,
        })
    }

    /// The merged weight `W + (α/r) · B A`, detached (a plain tensor).
    pub fn merge(&self) -> Result<Tensor> {
        let delta = (self.b.matmul(&self.a)? * self.scale)?;
        Ok((&self.weight + delta)?.detach())
    }

    pub fn base_weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn lora_a(&self) -> &Tensor {
        &self.a
    }

    pub fn lora_b(&self) -> &Tensor {
        &self.b
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let base = linear_forward(x, &self.weight, self.bias.as_ref())?;
        let down = linear_forward(x, &self.a, None)?;
        let up = linear_forward(&down, &self.b, None)?;
        base + (up * self.scale)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::init::seeded_var_builder;
    use crate::nn::linear::Proj;
    use candle_core::{DType, Device, Var, D};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

    fn base(dev: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 11, dtype, dev);
        let w = vb.get_with_hints((5, 6), "w", linear_init(6))?.detach();
        let b = vb.get_with_hints(5, "b", linear_init(6))?.detach();
        Ok((w, b))
    }

    #[test]
    fn targets_match_whole_path_segments() {
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["query".into(), "attention.output.dense".into()],
        };
        assert!(cfg.applies_to("encoder.layer.0.attention.self.query"));
        assert!(cfg.applies_to("query"));
        assert!(cfg.applies_to("encoder.layer.1.attention.output.dense"));
        assert!(!cfg.applies_to("encoder.layer.1.output.dense"));
        assert!(!cfg.applies_to("encoder.layer.1.attention.self.subquery"));
        assert!(!cfg.applies_to("encoder.layer.1.attention.self.key"));
        assert_eq!(cfg.scale(), 2.0);
    }

    #[test]
    fn starts_equal_to_base_and_merge_matches_adapter() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = base(&dev, DType::F32)?;
        let vm = VarMap::new();
        let lora = LoraLinear::new(
            &w,
            Some(&b),
            3,
            6.0,
            seeded_var_builder(&vm, 3, DType::F32, &dev),
        )?;
        let x = Tensor::arange(0f32, 24.0, &dev)?
            .reshape((2, 2, 6))?
            .affine(0.1, -1.0)?;
        let plain = linear_forward(&x, &w, Some(&b))?;
        let diff0 = (lora.forward(&x)? - &plain)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff0, 0.0, "B = 0 must leave the base output unchanged");

        // Make B non-zero, then compare the adapter path with the merged weight.
        let vars = vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?;
        let bvar = vars
            .get("lora_b")
            .ok_or_else(|| candle_core::Error::Msg("no lora_b".into()))?;
        bvar.set(
            &Tensor::arange(0f32, 15.0, &dev)?
                .reshape((5, 3))?
                .affine(0.05, -0.3)?,
        )?;
        drop(vars);
        let adapted = lora.forward(&x)?;
        let merged = linear_forward(&x, &lora.merge()?, Some(&b))?;
        let moved = (&adapted - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            moved > 1e-2,
            "a non-zero B must change the output ({moved})"
        );
        let diff = (&adapted - &merged)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff < 1e-5,
            "merged weights differ from base + adapter by {diff}"
        );
        Ok(())
    }

    #[test]
    fn only_adapter_variables_change_during_training() -> Result<()> {
        let dev = Device::Cpu;
        // The base is built from trainable Vars on purpose: LoRA must still
        // leave it alone (it is detached), even if a caller passed all vars to
        // the optimizer.
        let base_vm = VarMap::new();
        let bvb = seeded_var_builder(&base_vm, 5, DType::F32, &dev);
        let proj = Proj::new(6, 4, true, bvb.pp("fc"))?;
        let (w, b) = match &proj {
            Proj::Plain { weight, bias } => (weight.clone(), bias.clone()),
            Proj::Lora(_) => candle_core::bail!("expected a plain layer"),
        };
        let w_before = w.flatten_all()?.to_vec1::<f32>()?;
        let b_before = b.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;

        let lora_vm = VarMap::new();
        let lora = LoraLinear::new(
            &w,
            b.as_ref(),
            2,
            4.0,
            seeded_var_builder(&lora_vm, 6, DType::F32, &dev),
        )?;
        let a_before = lora.lora_a().flatten_all()?.to_vec1::<f32>()?;
        let mut all: Vec<Var> = lora_vm.all_vars();
        all.extend(base_vm.all_vars());
        let mut opt = AdamW::new(
            all,
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )?;
        let x = Tensor::arange(0f32, 48.0, &dev)?
            .reshape((8, 6))?
            .affine(0.05, -1.0)?;
        let target = Tensor::arange(0f32, 32.0, &dev)?
            .reshape((8, 4))?
            .affine(-0.03, 0.5)?;
        let mut first = None;
        let mut last = 0f32;
        for _ in 0..20 {
            let loss = (lora.forward(&x)? - &target)?.sqr()?.mean_all()?;
            last = loss.to_scalar::<f32>()?;
            first.get_or_insert(last);
            opt.backward_step(&loss)?;
        }
        assert!(last < first.unwrap_or(0.0), "training must reduce the loss");
        assert_eq!(
            w.flatten_all()?.to_vec1::<f32>()?,
            w_before,
            "base weight changed"
        );
        assert_eq!(
            b.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?,
            b_before,
            "base bias changed"
        );
        assert_ne!(
            lora.lora_a().flatten_all()?.to_vec1::<f32>()?,
            a_before,
            "A did not train"
        );
        let bmax = lora.lora_b().abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(bmax > 0.0, "B did not train");
        Ok(())
    }

    #[test]
    fn gradients_reach_adapters_and_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = base(&dev, DType::F64)?;
        let vm = VarMap::new();
        let lora = LoraLinear::new(
            &w,
            Some(&b),
            2,
            3.0,
            seeded_var_builder(&vm, 9, DType::F64, &dev),
        )?;
        // B = 0 would give A a zero gradient: move B off zero first.
        for (name, var) in vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .iter()
        {
            if name == "lora_b" {
                var.set(
                    &Tensor::arange(0f64, 10.0, &dev)?
                        .reshape((5, 2))?
                        .affine(0.1, -0.4)?,
                )?;
            }
        }
        let x = Tensor::arange(0f64, 18.0, &dev)?
            .reshape((3, 6))?
            .affine(0.1, -0.8)?;
        let loss_fn = || -> Result<Tensor> {
            let y = lora.forward(&x)?;
            candle_nn::ops::softmax(&y, D::Minus1)?.sqr()?.sum_all()
        };
        crate::nn::gradcheck::check_all(&vm, loss_fn, 4, 1e-6, 1e-5)
    }
}
