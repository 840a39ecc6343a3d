//! Seeded initialisation and dropout.
//!
//! candle's CPU random number generator cannot be seeded
//! (`Device::Cpu.set_seed` fails), so `VarBuilder::from_varmap` gives a
//! different initialisation on every run. [`seeded_var_builder`] returns a
//! `VarBuilder` over a [`VarMap`] whose missing variables are drawn from a
//! `StdRng` seeded by the caller, in construction order: the same seed gives
//! bit-identical weights. Variables already present in the map (a loaded
//! checkpoint, pretrained weights) are returned as they are, after a shape and
//! dtype check.
//!
//! Initialisation follows PyTorch's defaults so that runs are comparable with
//! a PyTorch model built the same way:
//! - [`linear_init`]: `nn.Linear` weight and bias, U(−1/√fan_in, 1/√fan_in)
//!   (Kaiming-uniform with a = √5, as in `reset_parameters`);
//! - embeddings: N(0, 1) (`nn.Embedding`), or a caller-chosen σ;
//! - layer norm: weight 1, bias 0.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// PyTorch's `nn.Linear` initialisation for a weight or bias with the given
/// fan-in: U(−1/√fan_in, 1/√fan_in).
pub fn linear_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A normal initialisation N(0, σ²).
pub fn normal_init(stdev: f64) -> Init {
    Init::Randn { mean: 0.0, stdev }
}

/// A `VarMap` backend that draws missing variables from a seeded RNG.
pub struct SeededBackend {
    varmap: VarMap,
    rng: Mutex<StdRng>,
    used: UsedNames,
}

/// The names of the tensors a model asked its `VarBuilder` for (shared with
/// the builder, filled while the model is built).
#[derive(Debug, Clone, Default)]
pub struct UsedNames(Arc<Mutex<BTreeSet<String>>>);

impl UsedNames {
    pub fn names(&self) -> BTreeSet<String> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl SeededBackend {
    pub fn new(varmap: &VarMap, seed: u64) -> Self {
        Self {
            varmap: varmap.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            used: UsedNames::default(),
        }
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("a lock was poisoned by a panicking thread".into())
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.used
            .0
            .lock()
            .map_err(|_| poisoned())?
            .insert(name.to_string());
        let mut data = self.varmap.data().lock().map_err(|_| poisoned())?;
        if let Some(var) = data.get(name) {
            let t = var.as_tensor();
            if t.shape() != &s {
                candle_core::bail!("tensor {name}: expected shape {s:?}, found {:?}", t.shape());
            }
            if t.dtype() != dtype {
                candle_core::bail!(
                    "tensor {name}: expected dtype {dtype:?}, found {:?}",
                    t.dtype()
                );
            }
            // A copy on another device would be a new tensor, not the
            // variable the optimizer updates: refuse rather than train a copy.
            if !t.device().same_device(dev) {
                candle_core::bail!(
                    "tensor {name}: the variable is on {:?}, the model on {dev:?}",
                    t.device().location()
                );
            }
            return Ok(t.clone());
        }
        let values = {
            let mut rng = self.rng.lock().map_err(|_| poisoned())?;
            sample(&s, h, &mut rng)
        };
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().map_err(|_| poisoned())?;
        match data.get(name) {
            Some(var) => var.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("cannot find tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A `VarBuilder` whose new variables are created in `varmap`, drawn from a
/// `StdRng` seeded with `seed` (see the module docs).
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededBackend::new(varmap, seed)),
        dtype,
        device.clone(),
    )
}

/// [`seeded_var_builder`], plus the set of tensor names that the model built
/// from it asked for.
pub fn seeded_var_builder_tracked(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, UsedNames) {
    let backend = SeededBackend::new(varmap, seed);
    let used = backend.used.clone();
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        used,
    )
}

/// A `VarMap` whose variables start from the given tensors (pretrained
/// weights or a checkpoint), copied onto `device` (where training runs).
pub fn varmap_from_tensors(tensors: &HashMap<String, Tensor>, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().map_err(|_| poisoned())?;
        for (name, t) in tensors {
            data.insert(
                name.clone(),
                Var::from_tensor(&t.to_device(device)?.detach())?,
            );
        }
    }
    Ok(varmap)
}

/// The variables of `varmap` whose names start with one of `prefixes`, sorted
/// by name (a stable order for optimizers and checkpoints).
pub fn vars_with_prefix(varmap: &VarMap, prefixes: &[&str]) -> Result<Vec<(String, Var)>> {
    let data = varmap.data().lock().map_err(|_| poisoned())?;
    let mut out: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p)))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A standard normal sample (Box–Muller).
fn randn(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn sample(shape: &Shape, init: Init, rng: &mut StdRng) -> Vec<f64> {
    let n = shape.elem_count();
    match init {
        Init::Const(v) => vec![v; n],
        Init::Uniform { lo, up } => (0..n).map(|_| lo + (up - lo) * rng.gen::<f64>()).collect(),
        Init::Randn { mean, stdev } => (0..n).map(|_| mean + stdev * randn(rng)).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (0..n).map(|_| std * randn(rng)).collect(),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| -bound + 2.0 * bound * rng.gen::<f64>())
                        .collect()
                }
            }
        }
    }
}

/// Inverted dropout with a mask drawn from `rng`: each element is zeroed with
/// probability `p` and the rest are scaled by 1/(1−p). Differentiable
/// (a multiplication by a constant mask).
pub fn dropout(x: &Tensor, p: f64, rng: &mut StdRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_existing_vars_are_kept() -> Result<()> {
        let dev = Device::Cpu;
        let build = |seed| -> Result<Vec<f32>> {
            let vm = VarMap::new();
            let vb = seeded_var_builder(&vm, seed, DType::F32, &dev);
            vb.get_with_hints((4, 3), "w", linear_init(3))?
                .flatten_all()?
                .to_vec1()
        };
        let a = build(7)?;
        assert_eq!(a, build(7)?);
        assert_ne!(a, build(8)?);
        assert!(a.iter().all(|v| v.abs() <= 1.0 / 3f32.sqrt()));

        let mut pre = HashMap::new();
        pre.insert("w".to_string(), Tensor::ones((4, 3), DType::F32, &dev)?);
        let vm = varmap_from_tensors(&pre, &dev)?;
        let vb = seeded_var_builder(&vm, 7, DType::F32, &dev);
        let w = vb.get_with_hints((4, 3), "w", linear_init(3))?;
        assert_eq!(w.sum_all()?.to_scalar::<f32>()?, 12.0);
        assert!(vb.get_with_hints((3, 4), "w", linear_init(3)).is_err());
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_and_scales() -> Result<()> {
        let x = Tensor::ones(1000, DType::F32, &Device::Cpu)?;
        let a = dropout(&x, 0.25, &mut StdRng::seed_from_u64(1))?.to_vec1::<f32>()?;
        let b = dropout(&x, 0.25, &mut StdRng::seed_from_u64(1))?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((150..350).contains(&zeros), "{zeros} zeros");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
        Ok(())
    }
}
