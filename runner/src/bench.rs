//! `sanhak bench train`: training throughput of each program on its lab's
//! shapes, against PyTorch on the same model and shapes in the same run.
//!
//! For each program the candle side builds the model the program trains
//! (image CNN, byte-level GPT, BERT sentence classifier), draws random
//! inputs, and times full training steps (forward, backward, AdamW) after a
//! few untimed warm-up steps; the median step gives samples/s or tokens/s.
//! Where `import torch` works in the given Python, `bench/torch_train.py`
//! (embedded in this binary) builds the same model in PyTorch with the same
//! shapes and thread count and is timed the same way; the ratio
//! candle/PyTorch is printed (above 1.0: candle is faster).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use clap::{Args, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::check::{load_recipe, SOLUTION_RECIPE};
use crate::lab::Lab;
use crate::nn::bench::{bench_gpt_train, GptBenchSpec};
use crate::nn::bert::{build_classifier, BertConfig, EncodedBatch, FineTuneMode};
use crate::nn::gpt::GptConfig;
use crate::programs::run_program;
use crate::programs::{image, text};
use crate::train::events::VecSink;
use crate::train::{Budget, Optimizer, RunOptions, Schedule, ScheduleKind, TrainConfig};

/// The PyTorch side, written to a temporary file when run.
const TORCH_SCRIPT: &str = include_str!("../bench/torch_train.py");

/// Benchmark commands.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Training steps per second of each program on its lab's shapes, with
    /// PyTorch side by side where it is importable.
    Train(TrainBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TrainBenchArgs {
    /// Only this program (image-classifier, byte-gpt, sentence-classifier).
    #[arg(long)]
    pub program: Option<String>,
    /// Timed steps per program (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// The Python interpreter whose PyTorch is compared.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip PyTorch even when it is importable.
    #[arg(long)]
    pub no_torch: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One program's shapes: the candle model to build and the same spec for PyTorch.
#[derive(Debug, Clone)]
pub enum Shapes {
    Image {
        channels: [usize; 2],
        hidden: usize,
        classes: usize,
        batch: usize,
    },
    Gpt {
        cfg: GptConfig,
        batch: usize,
    },
    Sentence {
        cfg: BertConfig,
        seq_len: usize,
        classes: usize,
        batch: usize,
    },
}

impl Shapes {
    pub fn program(&self) -> &'static str {
        match self {
            Shapes::Image { .. } => image::NAME,
            Shapes::Gpt { .. } => crate::programs::lm::NAME,
            Shapes::Sentence { .. } => text::NAME,
        }
    }

    /// Human-readable shapes.
    pub fn describe(&self) -> String {
        match self {
            Shapes::Image {
                channels,
                hidden,
                classes,
                batch,
            } => format!(
                "batch {batch}, 28×28, conv {}/{}, fc {hidden}, {classes} classes",
                channels[0], channels[1]
            ),
            Shapes::Gpt { cfg, batch } => format!(
                "batch {batch} × {} bytes, {} layers, width {}",
                cfg.block_size, cfg.n_layer, cfg.n_embd
            ),
            Shapes::Sentence {
                cfg,
                seq_len,
                batch,
                ..
            } => format!(
                "batch {batch} × {seq_len} tokens, {} layers, width {}, full fine-tuning",
                cfg.num_hidden_layers, cfg.hidden_size
            ),
        }
    }

    /// The JSON spec of `torch_train.py`.
    fn torch_spec(&self, warmup: usize, steps: usize, threads: usize) -> serde_json::Value {
        let mut v = match self {
            Shapes::Image {
                channels,
                hidden,
                classes,
                batch,
            } => serde_json::json!({
                "channels": channels, "hidden": hidden, "classes": classes, "batch": batch,
            }),
            Shapes::Gpt { cfg, batch } => serde_json::json!({
                "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
                "block_size": cfg.block_size, "batch": batch,
            }),
            Shapes::Sentence {
                cfg,
                seq_len,
                classes,
                batch,
            } => serde_json::json!({
                "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
                "intermediate_size": cfg.intermediate_size, "seq_len": seq_len,
                "classes": classes, "batch": batch,
            }),
        };
        v["program"] = self.program().into();
        v["warmup"] = warmup.into();
        v["steps"] = steps.into();
        v["threads"] = threads.into();
        v
    }
}

/// One measured side.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Samples or tokens per second.
    pub per_s: f64,
    pub step_ms: f64,
    pub params: usize,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// One program's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub program: String,
    pub shapes: String,
    /// `samples` or `tokens`.
    pub unit: String,
    pub candle: Side,
    pub torch: Option<Side>,
    /// Why PyTorch was not measured.
    pub torch_note: Option<String>,
    /// candle / PyTorch throughput.
    pub ratio: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Times `step` (one full training step returning the loss): median seconds,
/// first and last loss.
fn time_steps(
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut times = Vec::with_capacity(steps);
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = step()?;
        let dt = t0.elapsed().as_secs_f64();
        if i == 0 {
            first = loss;
        }
        last = loss;
        if i >= warmup {
            times.push(dt);
        }
    }
    Ok((median(times), first, last))
}

/// An AdamW like the programs use (lr 1e-3, weight decay 0.01 on matrices).
fn adamw(vars: Vec<Var>) -> anyhow::Result<Optimizer> {
    let schedule = Schedule {
        kind: ScheduleKind::Constant,
        peak: 1e-3,
        warmup: 0,
        total: u64::MAX,
    };
    Ok(Optimizer::new(vars, 0.01, schedule, None)?)
}

fn scalar(t: &Tensor) -> anyhow::Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The candle side of one program.
pub fn bench_candle(shapes: &Shapes, warmup: usize, steps: usize) -> anyhow::Result<Side> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(0);
    match shapes {
        Shapes::Image {
            channels,
            hidden,
            classes,
            batch,
        } => {
            let settings = image::Settings {
                channels: *channels,
                hidden: *hidden,
                classes: (0..*classes).map(|c| c.to_string()).collect(),
                label_offset: 0,
                train_split: String::new(),
                valid_split: String::new(),
            };
            let mut weights = BTreeMap::new();
            let mut vars = Vec::new();
            for (k, t) in image::init_weights(&settings, *classes, 0)? {
                let v = Var::from_tensor(&t)?;
                weights.insert(k, v.as_tensor().clone());
                vars.push(v);
            }
            let params = vars.iter().map(|v| v.elem_count()).sum();
            let mut opt = adamw(vars)?;
            let x = Tensor::randn(0f32, 1.0, (*batch, 1, 28, 28), &dev)?;
            let y: Vec<u32> = (0..*batch)
                .map(|_| rng.gen_range(0..*classes as u32))
                .collect();
            let y = Tensor::from_vec(y, *batch, &dev)?;
            let (s, first, last) = time_steps(warmup, steps, || {
                let logits = image::forward(&weights, &x, None)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                let v = scalar(&loss)?;
                opt.backward_step(&loss)?;
                Ok(v)
            })?;
            Ok(Side {
                per_s: *batch as f64 / s,
                step_ms: s * 1e3,
                params,
                first_loss: first,
                last_loss: last,
            })
        }
        Shapes::Gpt { cfg, batch } => {
            let spec = GptBenchSpec {
                cfg: *cfg,
                batch: *batch,
                warmup,
                steps,
                seed: 0,
            };
            let r = bench_gpt_train(&spec, &dev)?;
            Ok(Side {
                per_s: r.tokens_per_s,
                step_ms: r.step_ms,
                params: r.params,
                first_loss: f64::from(r.first_loss),
                last_loss: f64::from(r.last_loss),
            })
        }
        Shapes::Sentence {
            cfg,
            seq_len,
            classes,
            batch,
        } => {
            let mut cfg = cfg.clone();
            cfg.hidden_dropout_prob = 0.0;
            cfg.attention_probs_dropout_prob = 0.0;
            let encoder = text::random_encoder(&cfg, 0)?;
            let (model, varmap) =
                build_classifier(&encoder, &cfg, *classes, &FineTuneMode::Full, None, 0, &dev)?;
            let vars = varmap.all_vars();
            let params = vars.iter().map(|v| v.elem_count()).sum();
            let mut opt = adamw(vars)?;
            let vocab = cfg.vocab_size as u32;
            let ids: Vec<Vec<u32>> = (0..*batch)
                .map(|_| (0..*seq_len).map(|_| rng.gen_range(3..vocab)).collect())
                .collect();
            let input = EncodedBatch::from_ids(&ids, 0, &dev)?;
            let y: Vec<u32> = (0..*batch)
                .map(|_| rng.gen_range(0..*classes as u32))
                .collect();
            let y = Tensor::from_vec(y, *batch, &dev)?;
            let (s, first, last) = time_steps(warmup, steps, || {
                let loss = model.loss_t(&input, &y, None)?;
                let v = scalar(&loss)?;
                opt.backward_step(&loss)?;
                Ok(v)
            })?;
            Ok(Side {
                per_s: *batch as f64 / s,
                step_ms: s * 1e3,
                params,
                first_loss: first,
                last_loss: last,
            })
        }
    }
}

/// The PyTorch side, or why it was not measured.
pub fn bench_torch(
    python: &str,
    shapes: &Shapes,
    warmup: usize,
    steps: usize,
    threads: usize,
) -> Result<Side, String> {
    let spec = shapes.torch_spec(warmup, steps, threads).to_string();
    let v = run_torch(python, &spec)?;
    let f = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    Ok(Side {
        per_s: f("per_s"),
        step_ms: f("step_ms"),
        params: v.get("params").and_then(|p| p.as_u64()).unwrap_or(0) as usize,
        first_loss: f("first_loss"),
        last_loss: f("last_loss"),
    })
}

/// Runs `torch_train.py` with a JSON spec and returns its JSON answer, or
/// why there is none (PyTorch missing, the interpreter missing, a crash).
fn run_torch(python: &str, spec: &str) -> Result<serde_json::Value, String> {
    let dir = scratch_dir().map_err(|e| e.to_string())?;
    let script = dir.path().join("torch_train.py");
    std::fs::write(&script, TORCH_SCRIPT).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(spec)
        .output();
    drop(dir);
    let out = out.map_err(|e| format!("cannot run {python}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| {
        format!(
            "{python} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        )
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(e.to_string());
    }
    Ok(v)
}

/// A private temporary folder, removed when dropped.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("sanhak-bench-").tempdir()
}

fn setting(lab: &Lab, path: &[&str]) -> anyhow::Result<usize> {
    let mut v = lab
        .manifest
        .program
        .settings
        .get(path[0])
        .with_context(|| format!("{}: no program.settings.{}", lab.id(), path[0]))?;
    for p in &path[1..] {
        v = v
            .get(p)
            .with_context(|| format!("{}: no program.settings.{}", lab.id(), path.join(".")))?;
    }
    match v {
        toml::Value::Integer(i) => Ok(usize::try_from(*i)?),
        toml::Value::Array(a) => Ok(a.len()),
        _ => bail!(
            "{}: program.settings.{} is not a number",
            lab.id(),
            path.join(".")
        ),
    }
}

/// The shapes of each program, read from the labs that use them.
pub fn lab_shapes(labs_dir: &Path) -> anyhow::Result<Vec<Shapes>> {
    let load = |id: &str| Lab::load(&labs_dir.join(id)).with_context(|| format!("lab {id}"));
    let fashion = load("fashion-transfer")?;
    let channels = match fashion.manifest.program.settings.get("channels") {
        Some(toml::Value::Array(a)) if a.len() == 2 => [
            usize::try_from(a[0].as_integer().unwrap_or(0))?,
            usize::try_from(a[1].as_integer().unwrap_or(0))?,
        ],
        _ => bail!("fashion-transfer: program.settings.channels"),
    };
    let lm = load("korean-lm-adapt")?;
    let sentiment = load("sentiment-finetune")?;
    let own = text::own_encoder_config(&sentiment)?;
    Ok(vec![
        Shapes::Image {
            channels,
            hidden: setting(&fashion, &["hidden"])?,
            classes: setting(&fashion, &["classes"])?,
            batch: 32,
        },
        Shapes::Gpt {
            cfg: GptConfig {
                vocab_size: 256,
                n_layer: setting(&lm, &["n_layer"])?,
                n_embd: setting(&lm, &["n_embd"])?,
                n_head: setting(&lm, &["n_head"])?,
                block_size: setting(&lm, &["block_size"])?,
                dropout: 0.0,
            },
            batch: 16,
        },
        Shapes::Sentence {
            // The lab's own word-level encoder; sentences are ~15 words.
            cfg: own.clone(),
            seq_len: 24,
            classes: setting(&sentiment, &["labels"])?,
            batch: 32,
        },
        Shapes::Sentence {
            // all-MiniLM-L6-v2's shapes (random weights): ~20 tokens a sentence.
            cfg: BertConfig {
                vocab_size: 30522,
                hidden_size: 384,
                num_hidden_layers: 6,
                num_attention_heads: 12,
                intermediate_size: 1536,
                max_position_embeddings: 512,
                ..own
            },
            seq_len: 32,
            classes: 2,
            batch: 32,
        },
    ])
}

/// A lab's solution recipe trained in candle and in PyTorch.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeComparison {
    pub lab: String,
    pub metric: String,
    pub candle_metric: f64,
    pub candle_s: f64,
    pub torch_metric: f64,
    pub torch_s: f64,
}

/// Trains fashion-transfer's solution recipe with candle (the real program)
/// and with the same model, base, data and recipe in PyTorch, and returns
/// both validation accuracies. A candle result far below PyTorch's points at
/// a bug (initialisation, a missing gradient, the schedule).
pub fn compare_solution_recipe(
    labs_dir: &Path,
    python: &str,
    threads: usize,
) -> anyhow::Result<RecipeComparison> {
    let lab = Lab::load(&labs_dir.join("fashion-transfer"))?;
    let recipe = load_recipe(&lab, &lab.dir().join(SOLUTION_RECIPE))?;
    let config = TrainConfig::from_recipe(&recipe);
    let Budget::Steps(steps) = config.budget else {
        bail!("the solution recipe gives epochs; the PyTorch side takes steps");
    };
    if config.early_stopping_patience.is_some() || config.lora.is_some() {
        bail!("the PyTorch side has no early stopping or LoRA");
    }
    let settings = &lab.manifest.program.settings;
    let split = |key: &str| -> anyhow::Result<String> {
        settings
            .get(key)
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("fashion-transfer: program.settings.{key}"))
    };
    let (train, valid) = (split("train_split")?, split("valid_split")?);
    let path = |split: &str, role: &str| -> anyhow::Result<String> {
        Ok(lab.public_file(split, role)?.display().to_string())
    };
    let channels = serde_json::to_value(
        settings
            .get("channels")
            .context("fashion-transfer: program.settings.channels")?,
    )?;
    let label_offset = settings
        .get("label_offset")
        .and_then(toml::Value::as_integer)
        .context("fashion-transfer: program.settings.label_offset")?;
    let spec = serde_json::json!({
        "mode": "recipe",
        "program": image::NAME,
        "base": lab.base_checkpoint_path()?.display().to_string(),
        "train_images": path(&train, "images")?,
        "train_labels": path(&train, "labels")?,
        "valid_images": path(&valid, "images")?,
        "valid_labels": path(&valid, "labels")?,
        "label_offset": label_offset,
        "classes": setting(&lab, &["classes"])?,
        "channels": channels,
        "hidden": setting(&lab, &["hidden"])?,
        "learning_rate": config.learning_rate,
        "schedule": match config.schedule {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        },
        "warmup_steps": config.warmup_steps,
        "steps": steps,
        "batch_size": config.batch_size,
        "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip.unwrap_or(0.0),
        "frozen": config.frozen,
        "dropout": config.dropout,
        "seed": config.seed,
        "threads": threads,
    });
    let t0 = Instant::now();
    let out = scratch_dir()?;
    let candle_metric = run_program(
        &lab,
        &recipe,
        out.path(),
        &RunOptions::default(),
        &mut VecSink::default(),
    )?
    .valid_metric
    .context("the candle run reported no validation metric")?;
    let candle_s = t0.elapsed().as_secs_f64();
    let v = run_torch(python, &spec.to_string()).map_err(anyhow::Error::msg)?;
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    Ok(RecipeComparison {
        lab: lab.id().to_string(),
        metric: "validation accuracy".into(),
        candle_metric,
        candle_s,
        torch_metric: f("valid_metric").context("PyTorch reported no valid_metric")?,
        torch_s: f("wall_s").unwrap_or(f64::NAN),
    })
}

/// Run the benchmark.
pub fn run_train_bench(args: &TrainBenchArgs, labs_dir: &Path) -> anyhow::Result<Vec<BenchRow>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let warmup = 3;
    let mut rows = Vec::new();
    for shapes in lab_shapes(labs_dir)? {
        if args
            .program
            .as_deref()
            .is_some_and(|p| p != shapes.program())
        {
            continue;
        }
        eprintln!("== {}: {}", shapes.program(), shapes.describe());
        let candle = bench_candle(&shapes, warmup, args.steps)?;
        let (torch, torch_note) = if args.no_torch {
            (None, Some("skipped (--no-torch)".to_string()))
        } else {
            match bench_torch(&args.python, &shapes, warmup, args.steps, threads) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            }
        };
        let ratio = torch.as_ref().map(|t| candle.per_s / t.per_s);
        rows.push(BenchRow {
            program: shapes.program().to_string(),
            shapes: shapes.describe(),
            unit: match shapes {
                Shapes::Gpt { .. } => "tokens",
                _ => "samples",
            }
            .to_string(),
            candle,
            torch,
            torch_note,
            ratio,
        });
    }
    if rows.is_empty() {
        bail!("no program matches --program");
    }
    Ok(rows)
}

impl BenchCommand {
    /// Runs the command, printing a table (or JSON) to stdout.
    pub fn run(self, labs_dir: &Path) -> anyhow::Result<()> {
        match self {
            BenchCommand::Train(args) => {
                let rows = run_train_bench(&args, labs_dir)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                    return Ok(());
                }
                println!(
                    "{:<20} {:>16} {:>16} {:>9}  shapes",
                    "program", "candle", "PyTorch", "ratio"
                );
                for r in &rows {
                    let torch = r
                        .torch
                        .as_ref()
                        .map_or("-".to_string(), |t| format!("{:.0} {}/s", t.per_s, r.unit));
                    let ratio = r.ratio.map_or("-".to_string(), |x| format!("{x:.2}"));
                    println!(
                        "{:<20} {:>16} {:>16} {:>9}  {}",
                        r.program,
                        format!("{:.0} {}/s", r.candle.per_s, r.unit),
                        torch,
                        ratio,
                        r.shapes
                    );
                }
                if let Some(note) = rows.iter().find_map(|r| r.torch_note.as_ref()) {
                    println!("PyTorch not measured: {note}");
                }
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                println!(
                    "ratio = candle throughput / PyTorch throughput on the same shapes, \
                     {threads} threads, f32, median of {} steps after 3 warm-up steps",
                    args.steps
                );
                let torch_ok = rows.iter().any(|r| r.torch.is_some());
                if torch_ok && args.program.as_deref().is_none_or(|p| p == image::NAME) {
                    eprintln!("== fashion-transfer solution recipe, candle and PyTorch");
                    match compare_solution_recipe(labs_dir, &args.python, threads) {
                        Ok(c) => println!(
                            "{} solution recipe, {}: candle {:.4} ({:.1} s), PyTorch {:.4} ({:.1} s)",
                            c.lab, c.metric, c.candle_metric, c.candle_s, c.torch_metric, c.torch_s
                        ),
                        Err(e) => println!("solution recipe in PyTorch not compared: {e:#}"),
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_measured_on_tiny_shapes() {
        let cfg = BertConfig::tiny();
        for shapes in [
            Shapes::Image {
                channels: [2, 2],
                hidden: 4,
                classes: 3,
                batch: 2,
            },
            Shapes::Gpt {
                cfg: GptConfig {
                    vocab_size: 256,
                    n_layer: 1,
                    n_embd: 8,
                    n_head: 2,
                    block_size: 4,
                    dropout: 0.0,
                },
                batch: 2,
            },
            Shapes::Sentence {
                cfg,
                seq_len: 5,
                classes: 2,
                batch: 2,
            },
        ] {
            let side = bench_candle(&shapes, 1, 2).unwrap();
            assert!(side.per_s.is_finite() && side.per_s > 0.0, "{shapes:?}");
            assert!(side.params > 0);
            assert!(side.first_loss.is_finite() && side.last_loss.is_finite());
            let spec = shapes.torch_spec(1, 2, 2);
            assert_eq!(spec["program"], shapes.program());
        }
    }

    #[test]
    fn the_labs_give_the_shapes() {
        let labs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs");
        let shapes = lab_shapes(&labs).unwrap();
        let programs: Vec<_> = shapes.iter().map(Shapes::program).collect();
        assert_eq!(
            programs,
            [
                image::NAME,
                crate::programs::lm::NAME,
                text::NAME,
                text::NAME
            ]
        );
        match &shapes[0] {
            Shapes::Image {
                channels, classes, ..
            } => assert_eq!((*channels, *classes), ([16, 32], 5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_python_is_reported_not_fatal() {
        let shapes = Shapes::Image {
            channels: [2, 2],
            hidden: 4,
            classes: 3,
            batch: 2,
        };
        let err = bench_torch("/nonexistent/python3", &shapes, 1, 1, 1).unwrap_err();
        assert!(err.contains("cannot run"), "{err}");
    }
}
