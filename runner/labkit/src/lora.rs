//! LoRA: the trait a `lora-from-scratch` submission implements.
//!
//! LoRA (Hu et al., 2021) keeps a pretrained linear layer `y = x Wᵀ + b`
//! frozen and learns a low-rank update of its weight:
//!
//! ```text
//! y = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ        A: [r, in],  B: [out, r]
//! ```
//!
//! Only `A` and `B` are trained (`r · (in + out)` numbers instead of
//! `in · out`). `B` starts at zero, so the adapted layer starts exactly equal
//! to the base; `A` starts small and random (uniform in ±1/√in). After
//! training, the update can be *merged* into one plain weight
//! `W' = W + (α / r) · B A`, so inference costs nothing extra.
//!
//! The harness ([`crate::harness`]) builds your layer with
//! [`LoraLayer::new`], calls [`LoraLayer::forward`] inside training and in
//! the numerical tests, reads and sets `A` and `B` through
//! [`LoraLayer::lora_a`] / [`LoraLayer::lora_b`], and exports
//! [`LoraLayer::merge`].

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::init::SeededRng;
use crate::Result;

/// The rank and scale of an adapter.
///
/// ```
/// use labkit::lora::LoraConfig;
/// let cfg = LoraConfig { rank: 4, alpha: 8.0 };
/// assert_eq!(cfg.scale(), 2.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank `r` of the update (at least 1).
    pub rank: usize,
    /// The scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }
}

/// A frozen linear layer `y = x Wᵀ + b`: the pretrained layer LoRA adapts.
///
/// The weight and bias are *detached* when the layer is built, so backprop
/// never reaches them, whatever they were made from.
///
/// ```
/// use labkit::candle::{Device, Tensor};
/// use labkit::lora::FrozenLinear;
///
/// let dev = Device::Cpu;
/// let w = Tensor::new(&[[1f32, 0.], [0., 2.], [1., 1.]], &dev)?; // [out 3, in 2]
/// let b = Tensor::new(&[0f32, 0., 10.], &dev)?;
/// let base = FrozenLinear::new(w, Some(b))?;
/// assert_eq!((base.in_dim(), base.out_dim()), (2, 3));
///
/// let x = Tensor::new(&[[1f32, 2.]], &dev)?; // a batch of one
/// assert_eq!(base.forward(&x)?.to_vec2::<f32>()?, vec![vec![1., 4., 13.]]);
///
/// // Any number of leading dimensions: [batch, time, in] → [batch, time, out].
/// let x3 = Tensor::ones((4, 5, 2), labkit::candle::DType::F32, &dev)?;
/// assert_eq!(base.forward(&x3)?.dims(), &[4, 5, 3]);
/// # Ok::<(), labkit::candle::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    /// Wraps `weight` (`[out, in]`) and an optional `bias` (`[out]`).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, _) = weight.dims2()?;
        if let Some(b) = &bias {
            if b.dims() != [out_dim] {
                candle_core::bail!(
                    "bias of shape {:?} does not match a weight with {out_dim} outputs",
                    b.dims()
                );
            }
        }
        Ok(Self {
            weight: weight.detach(),
            bias: bias.map(|b| b.detach()),
        })
    }

    /// The frozen weight `W`, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The frozen bias `b`, `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x Wᵀ + b` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A LoRA linear layer: what a `lora-from-scratch` submission implements.
///
/// The harness guarantees `config.rank ≥ 1` and gives you a seeded
/// generator, so the same seed always builds the same layer. All tensors are
/// `f32` on the device of the base weight.
///
/// A skeleton (this one compiles, but it is *not* LoRA: it ignores the
/// adapter, which is exactly what the numerical tests catch):
///
/// ```
/// use labkit::prelude::*;
///
/// pub struct NotYetLora {
///     base: FrozenLinear,
///     a: Var,
///     b: Var,
/// }
///
/// impl LoraLayer for NotYetLora {
///     fn new(base: FrozenLinear, config: LoraConfig, _rng: &mut SeededRng) -> Result<Self> {
///         let dev = base.weight().device().clone();
///         let a = Var::zeros((config.rank, base.in_dim()), DType::F32, &dev)?;
///         let b = Var::zeros((base.out_dim(), config.rank), DType::F32, &dev)?;
///         Ok(Self { base, a, b })
///     }
///     fn forward(&self, x: &Tensor) -> Result<Tensor> {
///         self.base.forward(x) // the adapter is missing
///     }
///     fn merge(&self) -> Result<Tensor> {
///         Ok(self.base.weight().clone()) // so is the update
///     }
///     fn lora_a(&self) -> &Var { &self.a }
///     fn lora_b(&self) -> &Var { &self.b }
/// }
///
/// let dev = Device::Cpu;
/// let base = FrozenLinear::new(Tensor::ones((3, 2), DType::F32, &dev)?, None)?;
/// let layer = NotYetLora::new(base, LoraConfig { rank: 1, alpha: 1.0 }, &mut SeededRng::new(0))?;
/// assert_eq!(layer.trainable_vars().len(), 2);
/// assert_eq!(layer.lora_a().dims(), &[1, 2]);
/// # Ok::<(), labkit::candle::Error>(())
/// ```
pub trait LoraLayer: Sized {
    /// Builds the adapter around a frozen `base` layer: `A` (`[rank, in]`)
    /// drawn from `rng`, `B` (`[out, rank]`) zero, both as trainable [`Var`]s.
    fn new(base: FrozenLinear, config: LoraConfig, rng: &mut SeededRng) -> Result<Self>;

    /// `x Wᵀ + b + (α/r) · (x Aᵀ) Bᵀ` for `x` of shape `[..., in]`
    /// (2-D `[batch, in]` and 3-D `[batch, time, in]` inputs both occur).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The merged weight `W + (α/r) · B A`, `[out, in]`, as a plain tensor.
    fn merge(&self) -> Result<Tensor>;

    /// The trainable down-projection `A`, `[rank, in]`.
    fn lora_a(&self) -> &Var;

    /// The trainable up-projection `B`, `[out, rank]`.
    fn lora_b(&self) -> &Var;

    /// The variables the optimizer trains: `A` and `B`.
    fn trainable_vars(&self) -> Vec<Var> {
        vec![self.lora_a().clone(), self.lora_b().clone()]
    }
}
