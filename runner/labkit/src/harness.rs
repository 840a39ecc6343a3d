//! The lab harness: the process protocol between the runner and a submission.
//!
//! A submission's `main.rs` calls [`main`] with its fine-tuning settings. The
//! runner then starts the submission's binary (in a sandbox) with one of two
//! subcommands:
//!
//! ```text
//! <bin> numerics --inputs in.safetensors --out out.safetensors [--seed N]
//! <bin> train --data DIR --out DIR --classes N --max-rank R --max-steps S
//!             [--seed N] [--eval-every N] [--step-scale F]
//! ```
//!
//! - **numerics** reads test cases the grader generated (names in
//!   [`names`]), runs the submission's layer on each (build, forward, merge,
//!   gradients) and writes the results. The grader recomputes every expected
//!   value itself and compares; nothing the binary says is believed.
//! - **train** fine-tunes the lab's model, a frozen base layer `fc` adapted by
//!   the submission's LoRA layer, then ReLU and a new classification `head`,
//!   on the prepared features in `DIR` ([`TRAIN_FILE`], [`VALID_FILE`],
//!   [`BASE_FILE`]). It streams [`crate::events`] on stdout and writes
//!   [`CHECKPOINT_FILE`] with the merged weight, the base bias, the head and
//!   the adapter tensors (names in [`names`]).
//!
//! Exit status: 0 on success, 1 when the run failed (the message is on
//! stderr), 2 for a bad command line.
//!
//! The functions behind the subcommands are public, so a submission can be
//! tried in-process:
//!
//! ```
//! use labkit::harness::{parse_args, Command};
//! let args = ["numerics", "--inputs", "in.safetensors", "--out", "out.safetensors"];
//! match parse_args(args.iter().map(|s| s.to_string()))? {
//!     Command::Numerics { inputs, out, seed } => {
//!         assert_eq!(inputs.to_str(), Some("in.safetensors"));
//!         assert_eq!(seed, 0);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // Bad input gets a clear error.
//! let err = parse_args(["train".to_string(), "--data".to_string()]).unwrap_err();
//! assert!(err.contains("--data"), "{err}");
//! # Ok::<(), String>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use crate::data::{BatchSampler, FeatureSet};
use crate::events::{Event, Reporter};
use crate::init::SeededRng;
use crate::lora::{FrozenLinear, LoraConfig, LoraLayer};

/// Files of the `train` data folder, and the checkpoint it writes.
pub const TRAIN_FILE: &str = "train.safetensors";
pub const VALID_FILE: &str = "valid.safetensors";
pub const BASE_FILE: &str = "base.safetensors";
pub const CHECKPOINT_FILE: &str = "model.safetensors";

/// Largest numerics input or base file read.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Tensor names of the protocol.
pub mod names {
    /// Numerics inputs, each prefixed by `<case>.`: the input `x`
    /// (`[..., in]`), the base `weight` (`[out, in]`) and optional `bias`,
    /// the adapter `lora_a` and `lora_b` to set, `alpha` (`[1]`), and
    /// `grad_out` (shape of the output): the gradient tests back-propagate
    /// the loss `Σ forward(x) ⊙ grad_out`.
    pub const X: &str = "x";
    pub const WEIGHT: &str = "weight";
    pub const BIAS: &str = "bias";
    pub const LORA_A: &str = "lora_a";
    pub const LORA_B: &str = "lora_b";
    pub const ALPHA: &str = "alpha";
    pub const GRAD_OUT: &str = "grad_out";
    /// Numerics outputs, each prefixed by `<case>.`: `A`, `B` and the
    /// forward output right after `new`; then, with the given `A` and `B`,
    /// the forward output, the merged weight and the gradients of `A` and `B`.
    pub const INIT_A: &str = "init_lora_a";
    pub const INIT_B: &str = "init_lora_b";
    pub const INIT_Y: &str = "init_y";
    pub const Y: &str = "y";
    pub const MERGED: &str = "merged";
    pub const GRAD_A: &str = "grad_a";
    pub const GRAD_B: &str = "grad_b";
    /// The outputs, in the order they are computed.
    pub const OUTPUTS: &[&str] = &[INIT_A, INIT_B, INIT_Y, Y, MERGED, GRAD_A, GRAD_B];
    /// Checkpoint tensors written by `train`.
    pub const FC_WEIGHT: &str = "fc.weight";
    pub const FC_BIAS: &str = "fc.bias";
    pub const FC_LORA_A: &str = "fc.lora_a";
    pub const FC_LORA_B: &str = "fc.lora_b";
    pub const HEAD_WEIGHT: &str = "head.weight";
    pub const HEAD_BIAS: &str = "head.bias";
}

/// A submission's fine-tuning settings (the `train` run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// LoRA rank (must not exceed the lab's rank budget).
    pub rank: usize,
    /// LoRA alpha: the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Peak learning rate of AdamW (5% linear warmup, then cosine decay).
    pub learning_rate: f64,
    /// Optimizer steps (must not exceed the lab's step limit).
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Numerics {
        inputs: PathBuf,
        out: PathBuf,
        seed: u64,
    },
    Train(TrainArgs),
}

/// Arguments of `train`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainArgs {
    pub data: PathBuf,
    pub out: PathBuf,
    pub classes: usize,
    pub max_rank: usize,
    pub max_steps: u64,
    pub seed: u64,
    pub eval_every: u64,
    pub step_scale: f64,
}

const USAGE: &str = "usage:\n  <bin> numerics --inputs FILE --out FILE [--seed N]\n  <bin> train --data DIR --out DIR --classes N --max-rank R --max-steps S [--seed N] [--eval-every N] [--step-scale F]";

/// Parse the arguments after the program name. Errors are human messages.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut it = args.into_iter();
    let sub = it.next().ok_or_else(|| format!("no subcommand\n{USAGE}"))?;
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            return Err(format!("unexpected argument `{flag}`\n{USAGE}"));
        };
        let value = it
            .next()
            .ok_or_else(|| format!("--{name} needs a value\n{USAGE}"))?;
        if flags.insert(name.to_string(), value).is_some() {
            return Err(format!("--{name} given twice"));
        }
    }
    let allowed: &[&str] = match sub.as_str() {
        "numerics" => &["inputs", "out", "seed"],
        "train" => &[
            "data",
            "out",
            "classes",
            "max-rank",
            "max-steps",
            "seed",
            "eval-every",
            "step-scale",
        ],
        other => return Err(format!("unknown subcommand `{other}`\n{USAGE}")),
    };
    if let Some(bad) = flags.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown option --{bad} for `{sub}`\n{USAGE}"));
    }
    let required = |name: &str| {
        flags
            .get(name)
            .cloned()
            .ok_or_else(|| format!("`{sub}` needs --{name}\n{USAGE}"))
    };
    fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("--{name}: `{v}` is not a valid number"))
    }
    let optional = |name: &str, default: &str| flags.get(name).cloned().unwrap_or(default.into());
    let seed: u64 = number("seed", &optional("seed", "0"))?;
    match sub.as_str() {
        "numerics" => Ok(Command::Numerics {
            inputs: required("inputs")?.into(),
            out: required("out")?.into(),
            seed,
        }),
        _ => {
            let a = TrainArgs {
                data: required("data")?.into(),
                out: required("out")?.into(),
                classes: number("classes", &required("classes")?)?,
                max_rank: number("max-rank", &required("max-rank")?)?,
                max_steps: number("max-steps", &required("max-steps")?)?,
                seed,
                eval_every: number("eval-every", &optional("eval-every", "50"))?,
                step_scale: number("step-scale", &optional("step-scale", "1"))?,
            };
            if a.classes < 2 || a.max_rank == 0 || a.max_steps == 0 || a.eval_every == 0 {
                return Err(
                    "--classes must be at least 2 and --max-rank, --max-steps, --eval-every positive"
                        .into(),
                );
            }
            if !(a.step_scale > 0.0 && a.step_scale <= 1.0) {
                return Err(format!(
                    "--step-scale must be in (0, 1], got {}",
                    a.step_scale
                ));
            }
            Ok(Command::Train(a))
        }
    }
}

/// A layer as the harness holds it: [`LoraLayer`] without its constructor,
/// behind a pointer. Private, so its method names never meet a submission's.
trait Layer {
    fn forward(&self, x: &Tensor) -> crate::Result<Tensor>;
    fn merge(&self) -> crate::Result<Tensor>;
    fn lora_a(&self) -> &Var;
    fn lora_b(&self) -> &Var;
    fn trainable_vars(&self) -> Vec<Var>;
}

impl<L: LoraLayer> Layer for L {
    fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        LoraLayer::forward(self, x)
    }
    fn merge(&self) -> crate::Result<Tensor> {
        LoraLayer::merge(self)
    }
    fn lora_a(&self) -> &Var {
        LoraLayer::lora_a(self)
    }
    fn lora_b(&self) -> &Var {
        LoraLayer::lora_b(self)
    }
    fn trainable_vars(&self) -> Vec<Var> {
        LoraLayer::trainable_vars(self)
    }
}

/// `L::new`, boxed.
type Build = fn(FrozenLinear, LoraConfig, &mut SeededRng) -> crate::Result<Box<dyn Layer>>;

fn build<L: LoraLayer + 'static>(
    base: FrozenLinear,
    config: LoraConfig,
    rng: &mut SeededRng,
) -> crate::Result<Box<dyn Layer>> {
    Ok(Box::new(L::new(base, config, rng)?))
}

/// The entry point of a submission: parses the command line, runs the
/// subcommand with the layer `L`, and exits (0 success, 1 failure, 2 usage).
///
/// Only the few lines that name `L` are compiled with the submission; the
/// harness itself was compiled once, with labkit, so a submission compiles
/// in a fraction of the time.
pub fn main<L: LoraLayer + 'static>(fine_tune: FineTune) {
    main_with(build::<L>, fine_tune)
}

fn main_with(build: Build, fine_tune: FineTune) {
    let code = match parse_args(std::env::args().skip(1)) {
        Err(msg) => {
            eprintln!("error: {msg}");
            2
        }
        Ok(cmd) => match run_with(build, &cmd, fine_tune, &mut Reporter::stdout()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

/// Run a parsed command with the layer `L`.
pub fn run<L: LoraLayer + 'static, W: std::io::Write>(
    cmd: &Command,
    fine_tune: FineTune,
    reporter: &mut Reporter<W>,
) -> crate::Result<()> {
    run_with(build::<L>, cmd, fine_tune, reporter)
}

fn run_with<W: std::io::Write>(
    build: Build,
    cmd: &Command,
    fine_tune: FineTune,
    reporter: &mut Reporter<W>,
) -> crate::Result<()> {
    match cmd {
        Command::Numerics { inputs, out, seed } => {
            let summary = numerics_with(build, inputs, out, *seed)?;
            reporter.log(format!(
                "numerics: {} cases, {} failed",
                summary.cases, summary.failed
            ));
            Ok(())
        }
        Command::Train(args) => train_with(build, args, fine_tune, reporter),
    }
}

/// What [`numerics`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumericsSummary {
    pub cases: usize,
    /// Cases where the layer returned an error or panicked (reported on stderr).
    pub failed: usize,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Run every test case of `inputs` through `L` and write the results to `out`.
/// A case whose layer fails is reported on stderr and left out of `out`.
pub fn numerics<L: LoraLayer + 'static>(
    inputs: &Path,
    out: &Path,
    seed: u64,
) -> crate::Result<NumericsSummary> {
    numerics_with(build::<L>, inputs, out, seed)
}

fn numerics_with(
    build: Build,
    inputs: &Path,
    out: &Path,
    seed: u64,
) -> crate::Result<NumericsSummary> {
    let t = crate::checkpoint::load(inputs, MAX_INPUT_BYTES)?;
    let cases: BTreeSet<String> = t
        .keys()
        .filter_map(|k| k.strip_suffix(&format!(".{}", names::X)).map(String::from))
        .collect();
    let mut results = BTreeMap::new();
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        let mut case_out = BTreeMap::new();
        let res = std::panic::catch_unwind(AssertUnwindSafe(|| {
            numerics_case(build, &t, case, seed.wrapping_add(i as u64), &mut case_out)
        }));
        let err = match res {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(p) => Some(format!("panicked: {}", panic_message(p.as_ref()))),
        };
        if let Some(e) = err {
            failed += 1;
            eprintln!("case {case}: {e}");
        }
        // Whatever was computed before a failure is still written.
        for (k, v) in case_out {
            results.insert(format!("{case}.{k}"), v);
        }
    }
    crate::checkpoint::save(&results, out)?;
    Ok(NumericsSummary {
        cases: cases.len(),
        failed,
    })
}

fn numerics_case(
    build: Build,
    t: &std::collections::HashMap<String, Tensor>,
    case: &str,
    seed: u64,
    out: &mut BTreeMap<String, Tensor>,
) -> crate::Result<()> {
    let get = |name: &str| {
        t.get(&format!("{case}.{name}"))
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("input `{case}.{name}` is missing")))
    };
    let x = get(names::X)?;
    let weight = get(names::WEIGHT)?;
    let bias = t.get(&format!("{case}.{}", names::BIAS)).cloned();
    let a = get(names::LORA_A)?;
    let b = get(names::LORA_B)?;
    let g = get(names::GRAD_OUT)?;
    let alpha = get(names::ALPHA)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let alpha = *alpha
        .first()
        .ok_or_else(|| candle_core::Error::Msg("empty alpha".into()))?;
    let config = LoraConfig {
        rank: a.dims2()?.0,
        alpha,
    };
    let layer = build(
        FrozenLinear::new(weight, bias)?,
        config,
        &mut SeededRng::new(seed),
    )?;
    out.insert(names::INIT_A.into(), layer.lora_a().as_tensor().copy()?);
    out.insert(names::INIT_B.into(), layer.lora_b().as_tensor().copy()?);
    out.insert(names::INIT_Y.into(), layer.forward(&x)?);
    layer.lora_a().set(&a)?;
    layer.lora_b().set(&b)?;
    let y = layer.forward(&x)?;
    out.insert(names::Y.into(), y.detach());
    out.insert(names::MERGED.into(), layer.merge()?.detach());
    let loss = (y * g)?.sum_all()?;
    let grads = loss.backward()?;
    for (var, name) in [
        (layer.lora_a(), names::GRAD_A),
        (layer.lora_b(), names::GRAD_B),
    ] {
        let grad = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => {
                eprintln!("case {case}: no gradient reached `{name}`");
                var.as_tensor().zeros_like()?
            }
        };
        out.insert(name.into(), grad);
    }
    Ok(())
}

/// Learning rate at `step` (1-based): linear warmup over `warmup` steps, then
/// cosine decay from the peak (first step after warmup) towards zero (reached
/// one step after `total`).
pub fn learning_rate_at(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = step.saturating_sub(warmup + 1) as f64 / span;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

/// The model of the `train` run: `head(relu(lora(x)))`.
struct Model {
    lora: Box<dyn Layer>,
    head_w: Var,
    head_b: Var,
}

impl Model {
    fn logits(&self, x: &Tensor) -> crate::Result<Tensor> {
        let h = self.lora.forward(x)?.relu()?;
        h.matmul(&self.head_w.as_tensor().t()?)?
            .broadcast_add(self.head_b.as_tensor())
    }

    fn accuracy(&self, set: &FeatureSet) -> crate::Result<f64> {
        let mut correct = 0usize;
        let mut start = 0;
        while start < set.len() {
            let len = (set.len() - start).min(500);
            let logits = self.logits(&set.features.narrow(0, start, len)?)?;
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += pred
                .iter()
                .zip(&set.label_vec[start..start + len])
                .filter(|(p, l)| **p as usize == **l)
                .count();
            start += len;
        }
        Ok(correct as f64 / set.len().max(1) as f64)
    }
}

fn expect_dims(what: &str, t: &Tensor, dims: &[usize]) -> crate::Result<()> {
    if t.dims() != dims {
        candle_core::bail!("{what} has shape {:?}, expected {dims:?}", t.dims());
    }
    Ok(())
}

/// Fine-tune the lab's model with the layer `L` and write the checkpoint.
pub fn train<L: LoraLayer + 'static, W: std::io::Write>(
    args: &TrainArgs,
    ft: FineTune,
    reporter: &mut Reporter<W>,
) -> crate::Result<()> {
    train_with(build::<L>, args, ft, reporter)
}

fn train_with<W: std::io::Write>(
    build: Build,
    args: &TrainArgs,
    ft: FineTune,
    reporter: &mut Reporter<W>,
) -> crate::Result<()> {
    let t0 = Instant::now();
    if ft.rank == 0 || ft.rank > args.max_rank {
        candle_core::bail!(
            "LoRA rank {} is outside the lab's rank budget 1..={}",
            ft.rank,
            args.max_rank
        );
    }
    if ft.steps == 0 || ft.steps > args.max_steps {
        candle_core::bail!(
            "{} steps is outside the lab's limit 1..={}",
            ft.steps,
            args.max_steps
        );
    }
    let lr_ok = ft.learning_rate.is_finite() && ft.learning_rate > 0.0 && ft.learning_rate <= 1.0;
    let alpha_ok = ft.alpha.is_finite() && ft.alpha > 0.0;
    if !lr_ok || !alpha_ok || ft.batch_size == 0 {
        candle_core::bail!(
            "learning_rate must be in (0, 1], alpha positive and batch_size at least 1"
        );
    }
    let train = FeatureSet::load(&args.data.join(TRAIN_FILE), args.classes)?;
    let valid = FeatureSet::load(&args.data.join(VALID_FILE), args.classes)?;
    let base = crate::checkpoint::load(&args.data.join(BASE_FILE), MAX_INPUT_BYTES)?;
    let get = |name: &str| {
        base.get(name)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("{BASE_FILE}: no tensor `{name}`")))
    };
    let (fc_w, fc_b) = (get(names::FC_WEIGHT)?, get(names::FC_BIAS)?);
    let (hidden, d) = fc_w.dims2()?;
    if d != train.dim() || d != valid.dim() {
        candle_core::bail!(
            "the base layer takes {d} features, the data has {}",
            train.dim()
        );
    }
    let mut rng = SeededRng::new(args.seed);
    let config = LoraConfig {
        rank: ft.rank,
        alpha: ft.alpha,
    };
    let lora = build(
        FrozenLinear::new(fc_w, Some(fc_b.clone()))?,
        config,
        &mut rng.fork(),
    )?;
    expect_dims("lora_a", lora.lora_a().as_tensor(), &[ft.rank, d])?;
    expect_dims("lora_b", lora.lora_b().as_tensor(), &[hidden, ft.rank])?;
    let bound = 1.0 / (hidden as f64).sqrt();
    let dev = Device::Cpu;
    let head_w = Var::from_tensor(&rng.uniform((args.classes, hidden), -bound, bound, &dev)?)?;
    let head_b = Var::from_tensor(&rng.uniform(args.classes, -bound, bound, &dev)?)?;
    let model = Model {
        lora,
        head_w,
        head_b,
    };
    let mut vars = model.lora.trainable_vars();
    vars.push(model.head_w.clone());
    vars.push(model.head_b.clone());
    let trainable_params = vars.iter().map(|v| v.elem_count() as u64).sum();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: ft.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let total = ((ft.steps as f64 * args.step_scale).round() as u64).max(1);
    let warmup = total / 20;
    let eval_every = ((args.eval_every as f64 * args.step_scale).round() as u64).max(1);
    reporter.emit(&Event::Started {
        program: "labkit-lora".into(),
        seed: args.seed,
        total_steps: total,
        trainable_params,
    });
    let mut sampler = BatchSampler::new(train.len(), ft.batch_size, args.seed);
    for step in 1..=total {
        let lr = learning_rate_at(ft.learning_rate, step, warmup, total);
        opt.set_learning_rate(lr);
        let (x, y) = train.batch(&sampler.next_batch())?;
        let loss = candle_nn::loss::cross_entropy(&model.logits(&x)?, &y)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            candle_core::bail!("the loss became {loss_v} at step {step}");
        }
        let grads = loss.backward()?;
        let mut sq = 0.0;
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        opt.step(&grads)?;
        reporter.emit(&Event::Step {
            step,
            loss: loss_v,
            lr,
            grad_norm: sq.sqrt(),
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
        if step % eval_every == 0 || step == total {
            let acc = model.accuracy(&valid)?;
            reporter.emit(&Event::Eval {
                step,
                metrics: BTreeMap::from([("accuracy".to_string(), acc)]),
                elapsed_s: t0.elapsed().as_secs_f64(),
            });
        }
    }
    let merged = model.lora.merge()?;
    expect_dims("the merged weight", &merged, &[hidden, d])?;
    let mut out = BTreeMap::new();
    out.insert(names::FC_WEIGHT.to_string(), merged.detach());
    out.insert(names::FC_BIAS.to_string(), fc_b);
    out.insert(
        names::FC_LORA_A.to_string(),
        model.lora.lora_a().as_tensor().detach(),
    );
    out.insert(
        names::FC_LORA_B.to_string(),
        model.lora.lora_b().as_tensor().detach(),
    );
    out.insert(
        names::HEAD_WEIGHT.to_string(),
        model.head_w.as_tensor().detach(),
    );
    out.insert(
        names::HEAD_BIAS.to_string(),
        model.head_b.as_tensor().detach(),
    );
    let bytes = crate::checkpoint::save(&out, &args.out.join(CHECKPOINT_FILE))?;
    reporter.emit(&Event::Checkpoint {
        path: CHECKPOINT_FILE.into(),
        bytes,
    });
    reporter.emit(&Event::Finished {
        steps: total,
        elapsed_s: t0.elapsed().as_secs_f64(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn train_arguments_parse_and_bad_ones_are_named() {
        let cmd = parse_args(args(
            "train --data d --out o --classes 5 --max-rank 8 --max-steps 100 --step-scale 0.5",
        ))
        .unwrap();
        let Command::Train(a) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            (a.classes, a.max_rank, a.max_steps, a.eval_every),
            (5, 8, 100, 50)
        );
        assert_eq!(a.step_scale, 0.5);
        let e = parse_args(args(
            "train --data d --out o --classes five --max-rank 8 --max-steps 1",
        ))
        .unwrap_err();
        assert!(e.contains("--classes") && e.contains("five"), "{e}");
        let e = parse_args(args("numerics --inputs a --out b --colour red")).unwrap_err();
        assert!(e.contains("--colour"), "{e}");
        let e = parse_args(args("dance")).unwrap_err();
        assert!(e.contains("dance"), "{e}");
        let e = parse_args(args(
            "train --data d --out o --classes 5 --max-rank 8 --max-steps 1 --step-scale 2",
        ))
        .unwrap_err();
        assert!(e.contains("step-scale"), "{e}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate_at(1.0, 5, 10, 100), 0.5);
        assert_eq!(learning_rate_at(1.0, 10, 10, 100), 1.0);
        assert_eq!(learning_rate_at(1.0, 11, 10, 100), 1.0);
        assert!((learning_rate_at(1.0, 56, 10, 100) - 0.5).abs() < 1e-12);
        let last = learning_rate_at(1.0, 100, 10, 100);
        assert!(last > 0.0 && last < 1e-3, "{last}");
        let lrs: Vec<f64> = (11..=100)
            .map(|s| learning_rate_at(1.0, s, 10, 100))
            .collect();
        assert!(lrs.windows(2).all(|w| w[1] < w[0]));
        // A one-step run still learns.
        assert_eq!(learning_rate_at(2.0, 1, 0, 1), 2.0);
    }
}
