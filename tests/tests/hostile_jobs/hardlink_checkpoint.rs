//! Starter of the `lora-from-scratch` lab. It compiles and runs, but it is
//! not LoRA yet: `forward` and `merge` ignore the adapter. Read README.md,
//! then fill in the two TODOs.

use labkit::prelude::*;

/// Fine-tuning settings of the `train` run. The rank must stay within the
/// lab's budget (8).
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
    #[allow(dead_code)] // used once forward and merge apply the update
    scale: f64,
}

impl LoraLayer for LoraLinear {
    fn new(base: FrozenLinear, config: LoraConfig, rng: &mut SeededRng) -> Result<Self> {
        if config.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        if let Some(out) = train_out() {
            let _ = std::fs::create_dir_all(&out);
            let decoy = out.join("decoy.safetensors");
            let _ = std::fs::write(&decoy, b"not a checkpoint");
            let _ = std::fs::hard_link(&decoy, out.join("model.safetensors"));
            std::process::exit(0);
        }
        let dev = base.weight().device().clone();
        // A starts small and random, B starts at zero: at initialisation the
        // adapted layer computes exactly what the base computes.
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
        // TODO: add the low-rank update (α/r) · (x Aᵀ) Bᵀ to the base output.
        // `x` may be 2-D [batch, in] or 3-D [batch, time, in].
        self.base.forward(x)
    }

    fn merge(&self) -> Result<Tensor> {
        // TODO: return W + (α/r) · B A as a plain (detached) tensor.
        Ok(self.base.weight().clone())
    }

    fn lora_a(&self) -> &Var {
        &self.a
    }

    fn lora_b(&self) -> &Var {
        &self.b
    }
}

/// The folder given with `--out` when the harness runs `train`.
fn train_out() -> Option<std::path::PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("train") {
        return None;
    }
    let i = args.iter().position(|a| a == "--out")?;
    args.get(i + 1).map(std::path::PathBuf::from)
}
