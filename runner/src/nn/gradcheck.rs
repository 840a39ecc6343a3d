//! Test helper: every trainable variable gets a finite, non-zero gradient,
//! and central finite differences agree with backprop (use F64 models).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarMap;

/// Checks every variable of `varmap` against `loss_fn` (which must rebuild
/// the loss from the current variable values). `samples` elements per
/// variable are compared with central differences of step `eps`; the
/// tolerance is `tol · max(1, |numeric|, |analytic|)`.
pub fn check_all<F>(varmap: &VarMap, loss_fn: F, samples: usize, eps: f64, tol: f64) -> Result<()>
where
    F: Fn() -> Result<Tensor>,
{
    let vars = crate::nn::init::vars_with_prefix(varmap, &[])?;
    if vars.is_empty() {
        candle_core::bail!("no trainable variables");
    }
    let loss = loss_fn()?;
    let grads = loss.backward()?;
    let mut failures = Vec::new();
    for (name, var) in &vars {
        let Some(g) = grads.get(var.as_tensor()) else {
            failures.push(format!("{name}: no gradient"));
            continue;
        };
        let g: Vec<f64> = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        if g.iter().any(|v| !v.is_finite()) {
            failures.push(format!("{name}: non-finite gradient"));
            continue;
        }
        if g.iter().all(|v| *v == 0.0) {
            failures.push(format!("{name}: gradient is all zeros"));
            continue;
        }
        let original = var.as_tensor().copy()?;
        let values: Vec<f64> = original.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let n = values.len();
        // Deterministic, spread-out sample, always including the element with
        // the largest gradient.
        let mut idx: Vec<usize> = (0..samples.min(n)).map(|k| (k * 7919 + 13) % n).collect();
        if let Some((imax, _)) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        {
            idx.push(imax);
        }
        for i in idx {
            let mut plus = values.clone();
            plus[i] += eps;
            let mut minus = values.clone();
            minus[i] -= eps;
            let shape = original.shape().clone();
            let dt = original.dtype();
            var.set(&Tensor::from_vec(plus, &shape, original.device())?.to_dtype(dt)?)?;
            let lp = loss_fn()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            var.set(&Tensor::from_vec(minus, &shape, original.device())?.to_dtype(dt)?)?;
            let lm = loss_fn()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            var.set(&original)?;
            let numeric = (lp - lm) / (2.0 * eps);
            let analytic = g[i];
            let scale = 1e-3f64.max(numeric.abs()).max(analytic.abs());
            if (numeric - analytic).abs() > tol * scale {
                failures.push(format!(
                    "{name}[{i}]: finite difference {numeric:.8e} vs backprop {analytic:.8e}"
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        candle_core::bail!("gradient check failed:\n{}", failures.join("\n"))
    }
}
