//! Reference solution of the `lora-from-scratch` lab: a LoRA linear layer
//! `y = x Wᵀ + b + (α/r) · (x Aᵀ) Bᵀ` and its merge `W + (α/r) · B A`.

use labkit::prelude::*;

/// Fine-tuning settings of the `train` run.
pub const FINE_TUNE: FineTune = FineTune {
    rank: 8,
    alpha: 16.0,
    learning_rate: 3e-3,
    steps: 400,
    batch_size: 32,
};

/// A frozen linear layer plus a trainable low-rank update.
pub struct LoraLinear {
    base: FrozenLinear,
    /// Down-projection, `[rank, in]`.
    a: Var,
    /// Up-projection, `[out, rank]`.
    b: Var,
    /// `alpha / rank`.
    scale: f64,
}

impl LoraLayer for LoraLinear {
    fn new(base: FrozenLinear, config: LoraConfig, rng: &mut SeededRng) -> Result<Self> {
        if config.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        let dev = base.weight().device().clone();
        // A: Kaiming-uniform as in PEFT, U(-1/√in, 1/√in); B: zero, so the
        // adapted layer starts equal to the base.
        let dtype = base.weight().dtype();
        let bound = 1.0 / (base.in_dim() as f64).sqrt();
        let a = rng.uniform((config.rank, base.in_dim()), -bound, bound, &dev)?;
        let a = Var::from_tensor(&a.to_dtype(dtype)?)?;
        let b = Var::zeros((base.out_dim(), config.rank), dtype, &dev)?;
        Ok(Self {
            base,
            a,
            b,
            scale: config.scale(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let base = self.base.forward(x)?;
        // broadcast_matmul: x may be [batch, in] or [batch, time, in].
        let down = x.broadcast_matmul(&self.a.as_tensor().t()?)?;
        let up = down.broadcast_matmul(&self.b.as_tensor().t()?)?;
        base + (up * self.scale)?
    }

    fn merge(&self) -> Result<Tensor> {
        let delta = (self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?;
        Ok((self.base.weight() + delta)?.detach())
    }

    fn lora_a(&self) -> &Var {
        &self.a
    }

    fn lora_b(&self) -> &Var {
        &self.b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dtype: DType, seed: u64) -> Result<LoraLinear> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(seed);
        let w = rng.uniform((5, 7), -0.4, 0.4, &dev)?.to_dtype(dtype)?;
        let b = rng.uniform(5, -0.1, 0.1, &dev)?.to_dtype(dtype)?;
        let l = LoraLinear::new(
            FrozenLinear::new(w, Some(b))?,
            LoraConfig {
                rank: 3,
                alpha: 6.0,
            },
            &mut rng,
        )?;
        // B = 0 gives A no gradient: move B off zero, as one training step would.
        l.lora_b()
            .set(&rng.uniform((5, 3), -0.5, 0.5, &dev)?.to_dtype(dtype)?)?;
        Ok(l)
    }

    fn loss(l: &LoraLinear, x: &Tensor) -> Result<Tensor> {
        candle_nn_softmax_sq(&l.forward(x)?)
    }

    /// A loss that depends non-linearly on every output (differentiable ops only).
    fn candle_nn_softmax_sq(y: &Tensor) -> Result<Tensor> {
        labkit::candle_nn::ops::softmax(y, D::Minus1)?
            .sqr()?
            .sum_all()
    }

    #[test]
    fn every_trainable_var_gets_a_finite_nonzero_gradient() -> Result<()> {
        let l = layer(DType::F32, 1)?;
        let x = SeededRng::new(2).uniform((4, 2, 7), -1.0, 1.0, &Device::Cpu)?;
        let grads = loss(&l, &x)?.backward()?;
        for v in l.trainable_vars() {
            let g = grads
                .get(v.as_tensor())
                .expect("a gradient for every trainable var");
            let v: Vec<f32> = g.flatten_all()?.to_vec1()?;
            assert!(v.iter().all(|x| x.is_finite()));
            assert!(v.iter().any(|x| *x != 0.0), "zero gradient");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let l = layer(DType::F64, 3)?;
        let x = SeededRng::new(4)
            .uniform((3, 7), -1.0, 1.0, &Device::Cpu)?
            .to_dtype(DType::F64)?;
        let grads = loss(&l, &x)?.backward()?;
        let eps = 1e-6;
        for var in l.trainable_vars() {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .expect("gradient")
                .flatten_all()?
                .to_vec1()?;
            let orig = var.as_tensor().copy()?;
            let flat: Vec<f64> = orig.flatten_all()?.to_vec1()?;
            for i in [0, flat.len() / 2, flat.len() - 1] {
                let at = |d: f64| -> Result<f64> {
                    let mut v = flat.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu)?)?;
                    loss(&l, &x)?.to_scalar::<f64>()
                };
                let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
                var.set(&orig)?;
                let diff = (numeric - analytic[i]).abs();
                assert!(
                    diff <= 1e-6 + 1e-4 * numeric.abs(),
                    "element {i}: finite difference {numeric}, backprop {}",
                    analytic[i]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn merge_equals_the_adapted_forward_and_init_equals_the_base() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(5);
        let w = rng.uniform((6, 4), -0.5, 0.5, &dev)?;
        let base = FrozenLinear::new(w, None)?;
        let l = LoraLinear::new(
            base.clone(),
            LoraConfig {
                rank: 2,
                alpha: 3.0,
            },
            &mut rng,
        )?;
        let x = rng.uniform((3, 4), -1.0, 1.0, &dev)?;
        let at_init = (l.forward(&x)? - base.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(at_init, 0.0);
        l.lora_b().set(&rng.uniform((6, 2), -0.5, 0.5, &dev)?)?;
        let merged = FrozenLinear::new(l.merge()?, None)?;
        let diff = (l.forward(&x)? - merged.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let moved = (l.forward(&x)? - base.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(moved > 1e-2, "a non-zero B must change the output");
        Ok(())
    }
}
