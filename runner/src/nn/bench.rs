//! Timing of GPT training steps (forward, backward, AdamW), for
//! `sanhak bench train`.

use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::gpt::{random_batch, Gpt, GptConfig};
use super::init::seeded_var_builder;
use super::Result;

/// Shapes and lengths of one benchmark.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GptBenchSpec {
    pub cfg: GptConfig,
    pub batch: usize,
    /// Untimed steps first (allocator and kernel warm-up).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    pub seed: u64,
}

impl GptBenchSpec {
    /// PERFORMANCE.md's CPU probe: batch 8, sequence 128, width 256, 4 heads,
    /// 4 layers, 10 timed steps.
    pub fn cpu_probe() -> Self {
        Self {
            cfg: GptConfig::cpu_probe(),
            batch: 8,
            warmup: 2,
            steps: 10,
            seed: 0,
        }
    }

    /// PERFORMANCE.md's GPU probe: batch 32, sequence 256, width 384, 6 heads,
    /// 6 layers.
    pub fn gpu_probe() -> Self {
        Self {
            cfg: GptConfig::gpu_probe(),
            batch: 32,
            warmup: 3,
            steps: 10,
            seed: 0,
        }
    }
}

/// Measured times, in milliseconds per step (medians over the timed steps).
#[derive(Debug, Clone, Serialize)]
pub struct GptBenchReport {
    pub params: usize,
    pub tokens_per_step: usize,
    pub step_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub tokens_per_s: f64,
    pub first_loss: f32,
    pub last_loss: f32,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Trains the GPT of `spec` on random bytes with AdamW (lr 3e-4, f32) and
/// times each phase. Device work is synchronised between phases (reading the
/// loss, and `Device::synchronize`), so the split is meaningful on GPUs too.
pub fn bench_gpt_train(spec: &GptBenchSpec, device: &Device) -> Result<GptBenchReport> {
    let cfg = spec.cfg;
    let vm = VarMap::new();
    let model = Gpt::new(seeded_var_builder(&vm, spec.seed, DType::F32, device), &cfg)?;
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 3e-4,
            ..Default::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let data: Vec<u8> = (0..(cfg.block_size + 1) * 64)
        .map(|_| rand::Rng::gen::<u8>(&mut rng))
        .collect();
    let (mut fwd, mut bwd, mut optm, mut step) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first_loss = f32::NAN;
    let mut last_loss = f32::NAN;
    for i in 0..spec.warmup + spec.steps {
        let (x, y) = random_batch(&data, spec.batch, cfg.block_size, &mut rng, device)?;
        device.synchronize()?;
        let t0 = Instant::now();
        let loss = model.loss(&x, &y)?;
        let lv = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        device.synchronize()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        device.synchronize()?;
        let t3 = Instant::now();
        if i == 0 {
            first_loss = lv;
        }
        last_loss = lv;
        if i >= spec.warmup {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            fwd.push(ms(t0, t1));
            bwd.push(ms(t1, t2));
            optm.push(ms(t2, t3));
            step.push(ms(t0, t3));
        }
    }
    let tokens = spec.batch * cfg.block_size;
    let step_ms = median(&mut step);
    Ok(GptBenchReport {
        params: cfg.num_params(),
        tokens_per_step: tokens,
        step_ms,
        forward_ms: median(&mut fwd),
        backward_ms: median(&mut bwd),
        optimizer_ms: median(&mut optm),
        tokens_per_s: if step_ms > 0.0 {
            tokens as f64 / (step_ms / 1e3)
        } else {
            0.0
        },
        first_loss,
        last_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_and_reports_consistent_figures() -> Result<()> {
        let spec = GptBenchSpec {
            cfg: GptConfig {
                vocab_size: 256,
                n_layer: 1,
                n_embd: 16,
                n_head: 2,
                block_size: 8,
                dropout: 0.0,
            },
            batch: 2,
            warmup: 1,
            steps: 3,
            seed: 1,
        };
        let r = bench_gpt_train(&spec, &Device::Cpu)?;
        assert_eq!(r.tokens_per_step, 16);
        assert_eq!(r.params, spec.cfg.num_params());
        assert!(r.tokens_per_s.is_finite());
        assert!(r.first_loss.is_finite() && r.last_loss.is_finite());
        Ok(())
    }
}
