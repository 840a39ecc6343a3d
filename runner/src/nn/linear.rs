//! [`Proj`], the linear projection every model here uses: a plain linear
//! layer (weights are `Var`s when trainable, plain tensors when frozen), or a
//! [`LoraLinear`] around a frozen base, chosen per module by a
//! [`LoraConfig`].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::init::linear_init;
use super::lora::{LoraConfig, LoraLinear};

/// Where LoRA adapters go while a model is built: the configuration, and a
/// `VarBuilder` (normally a seeded, trainable `VarMap`) that mirrors the
/// model's module paths.
#[derive(Clone)]
pub struct LoraSpec<'a> {
    pub cfg: &'a LoraConfig,
    pub vb: VarBuilder<'a>,
    path: String,
}

impl<'a> LoraSpec<'a> {
    pub fn new(cfg: &'a LoraConfig, vb: VarBuilder<'a>) -> Self {
        Self {
            cfg,
            vb,
            path: String::new(),
        }
    }

    /// The spec for a sub-module named `name`.
    pub fn pp(&self, name: &str) -> Self {
        let path = if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.path, name)
        };
        Self {
            cfg: self.cfg,
            vb: self.vb.pp(name),
            path,
        }
    }

    /// The module path from the model's root, e.g.
    /// `encoder.layer.0.attention.self.query`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A linear map `y = x Wᵀ + b`, plain or with a LoRA adapter.
#[derive(Debug, Clone)]
pub enum Proj {
    Plain {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Lora(LoraLinear),
}

impl Proj {
    /// A linear layer `in_dim → out_dim` named by `vb` (tensors `weight`
    /// `[out, in]` and `bias` `[out]`, PyTorch layout and initialisation).
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", linear_init(in_dim))?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", linear_init(in_dim))?)
        } else {
            None
        };
        Ok(Proj::Plain { weight, bias })
    }

    /// Like [`Proj::new`], and wrapped in a LoRA adapter when `lora` is given
    /// and its targets match this module's path.
    pub fn with_lora(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder<'_>,
        lora: Option<&LoraSpec<'_>>,
    ) -> Result<Self> {
        let plain = Self::new(in_dim, out_dim, bias, vb)?;
        match (lora, &plain) {
            (Some(spec), Proj::Plain { weight, bias }) if spec.cfg.applies_to(spec.path()) => {
                Ok(Proj::Lora(LoraLinear::new(
                    weight,
                    bias.as_ref(),
                    spec.cfg.rank,
                    spec.cfg.alpha,
                    spec.vb.clone(),
                )?))
            }
            _ => Ok(plain),
        }
    }

    /// The effective weight (merged when this is a LoRA layer), detached.
    pub fn merged_weight(&self) -> Result<Tensor> {
        match self {
            Proj::Plain { weight, .. } => Ok(weight.detach()),
            Proj::Lora(l) => l.merge(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Proj::Plain { bias, .. } => bias.as_ref(),
            Proj::Lora(l) => l.bias(),
        }
    }

    pub fn is_lora(&self) -> bool {
        matches!(self, Proj::Lora(_))
    }
}

/// `x Wᵀ (+ b)` for `x` of shape `[..., in]`.
pub(crate) fn linear_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims.last().copied().unwrap_or(0);
    let rows = x.elem_count() / in_dim.max(1);
    let y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = weight.dim(0)?;
    }
    y.reshape(out_dims)
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Plain { weight, bias } => linear_forward(x, weight, bias.as_ref()),
            Proj::Lora(l) => l.forward(x),
        }
    }
}

/// Layer normalisation over the last dimension through the differentiable
/// `ops::layer_norm_slow` (tensors `weight` = 1 and `bias` = 0 at init).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::init::ONE)?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::init::ZERO)?;
        Ok(Self { weight, bias, eps })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
    }
}
