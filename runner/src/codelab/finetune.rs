//! The graded fine-tuning run of the `lora` harness.
//!
//! The lab's program is `image-classifier`: a CNN whose convolutional layers
//! stay frozen. The runner (trusted) passes the public training and
//! validation images through the base's frozen `conv1`/`conv2` once and
//! hands the submission the resulting feature vectors plus the base `fc`
//! layer ([`prepare_data`]). The submission's `train` run adapts `fc` with its
//! own LoRA layer, trains a fresh `head`, and writes a checkpoint with the
//! merged `fc` weight and the adapter.
//!
//! The grader then checks the checkpoint ([`grade_run`]): a well-formed
//! safetensors file with exactly the expected tensors, a LoRA rank within
//! the budget (read from the adapter's shapes), the frozen bias unchanged,
//! and a merged weight that really is the base plus a multiple of `B·A` (so
//! the update's rank is within the budget whatever the binary claims). It
//! puts the frozen convolutions back and scores the model on the hidden split
//! with the program's own `evaluate`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use labkit::harness::{names, BASE_FILE, CHECKPOINT_FILE, TRAIN_FILE, VALID_FILE};

use super::process::ExitKind;
use super::sandboxed::{run_job, Isolation, Job};
use super::spec::FineTuneSpec;
use super::CodeLabError;
use crate::grade::checkpoint::{load_checked, TensorSpec, MAX_HEADER_BYTES};
use crate::grade::{grade_weights, GradeOutcome};
use crate::lab::{parse_settings, Lab, LabError};
use crate::programs::image::{self, BaseBuild, Settings};
use crate::programs::program_for;
use crate::train::events::Event;
use crate::train::CurveSummary;

/// The lab's image settings and base-class count.
fn image_settings(lab: &Lab) -> Result<(Settings, usize), CodeLabError> {
    let file = lab.manifest_path();
    if lab.manifest.program.name != image::NAME {
        return Err(LabError::invalid(
            &file,
            "program.name",
            format!("`{}` for the lora harness", image::NAME),
        )
        .into());
    }
    let s: Settings = parse_settings(&lab.manifest.program.settings, &file, "program.settings")?;
    let base = lab
        .manifest
        .base
        .as_ref()
        .ok_or_else(|| LabError::invalid(&file, "base", "a [base] table"))?;
    let b: BaseBuild = parse_settings(&base.build, &file, "base.build")?;
    Ok((s, b.classes.len()))
}

/// The frozen base weights (all of them, with the base's own head).
pub fn base_weights(lab: &Lab) -> Result<HashMap<String, Tensor>, CodeLabError> {
    let (s, base_classes) = image_settings(lab)?;
    let path = lab.base_checkpoint_path()?;
    load_checked(&path, &image::model_spec(&s, base_classes), &Device::Cpu)
        .map_err(|e| CodeLabError::Other(format!("base checkpoint {}: {e}", path.display())))
}

/// The input of `fc`: images through the frozen `conv1` and `conv2`
/// (convolution, ReLU, 2×2 max-pool, twice), flattened.
pub fn conv_features(
    weights: &HashMap<String, Tensor>,
    images: &Tensor,
) -> Result<Tensor, CodeLabError> {
    let get = |k: &str| {
        weights
            .get(k)
            .ok_or_else(|| CodeLabError::Other(format!("base checkpoint has no `{k}`")))
    };
    let mut chunks = Vec::new();
    let n = images.dim(0)?;
    let mut start = 0;
    while start < n {
        let len = (n - start).min(500);
        let mut h = images.narrow(0, start, len)?;
        for layer in ["conv1", "conv2"] {
            let w = get(&format!("{layer}.weight"))?;
            let b = get(&format!("{layer}.bias"))?;
            let c = b.dim(0)?;
            let y = h
                .conv2d(w, 1, 1, 1, 1)?
                .broadcast_add(&b.reshape((1, c, 1, 1))?)?
                .relu()?;
            h = image::max_pool_2x2(&y)?;
        }
        chunks.push(h.flatten_from(1)?);
        start += len;
    }
    Ok(Tensor::cat(&chunks, 0)?)
}

/// Write the submission's training data into `dir`: the features and labels
/// of the public training and validation splits, and the base `fc` layer.
/// Reads only public splits.
pub fn prepare_data(lab: &Lab, dir: &Path) -> Result<PreparedData, CodeLabError> {
    let (s, _) = image_settings(lab)?;
    let base = base_weights(lab)?;
    std::fs::create_dir_all(dir).map_err(|e| CodeLabError::io(dir, e))?;
    let mut sizes = BTreeMap::new();
    for (split, file) in [(&s.train_split, TRAIN_FILE), (&s.valid_split, VALID_FILE)] {
        let set = image::load_set(
            &lab.public_file(split, "images")?,
            &lab.public_file(split, "labels")?,
            s.label_offset,
            s.classes.len(),
        )?;
        let features = conv_features(&base, &set.images)?;
        let mut t = BTreeMap::new();
        t.insert("features".to_string(), features);
        t.insert("labels".to_string(), set.labels.to_dtype(DType::U32)?);
        labkit::checkpoint::save(&t, &dir.join(file))?;
        sizes.insert(split.clone(), set.len());
    }
    let mut t = BTreeMap::new();
    for k in [names::FC_WEIGHT, names::FC_BIAS] {
        let v = base
            .get(k)
            .ok_or_else(|| CodeLabError::Other(format!("base checkpoint has no `{k}`")))?;
        t.insert(k.to_string(), v.clone());
    }
    labkit::checkpoint::save(&t, &dir.join(BASE_FILE))?;
    Ok(PreparedData {
        dir: dir.to_path_buf(),
        classes: s.classes.len(),
        examples: sizes,
    })
}

/// The folder [`prepare_data`] wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreparedData {
    pub dir: PathBuf,
    pub classes: usize,
    /// Examples per split.
    pub examples: BTreeMap<String, usize>,
}

/// The graded fine-tuning run of one submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FineTuneReport {
    /// The grade of the checkpoint on the hidden split (rejected when the
    /// program failed or the checkpoint broke a rule).
    pub outcome: GradeOutcome,
    /// The LoRA rank read from the checkpoint.
    pub rank: Option<usize>,
    pub rank_budget: usize,
    /// Steps the program reported (display only).
    pub reported_steps: Option<u64>,
    /// Last validation accuracy the program reported (display only).
    pub reported_valid_metric: Option<f64>,
    pub exit: ExitKind,
    pub wall_s: f64,
    /// Peak resident memory of the submission's process, in MiB.
    pub peak_rss_mib: Option<f64>,
}

fn reject(reason: impl Into<String>) -> GradeOutcome {
    GradeOutcome::Rejected {
        reason: reason.into(),
    }
}

/// Largest checkpoint a `train` run may write.
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 20;

/// Run the submission's `train` and grade its checkpoint, as a plain child
/// process: for the lab author's own binaries (see [`run_fine_tune_isolated`]).
pub fn run_fine_tune(
    lab: &Lab,
    spec: &FineTuneSpec,
    binary: &Path,
    data: &PreparedData,
    out_dir: &Path,
    step_scale: f64,
    on_event: &mut dyn FnMut(&Event),
) -> Result<FineTuneReport, CodeLabError> {
    run_fine_tune_isolated(
        lab,
        spec,
        binary,
        data,
        out_dir,
        step_scale,
        &Isolation::Trusted,
        on_event,
    )
}

/// [`run_fine_tune`] under `isolation`: in the sandbox the binary reads the
/// prepared data (public splits and the base `fc`, read-only) and writes its
/// checkpoint to `/work`, which the grader reads back (regular file, size
/// cap) into `out_dir` before grading it on the hidden split outside.
#[allow(clippy::too_many_arguments)]
pub fn run_fine_tune_isolated(
    lab: &Lab,
    spec: &FineTuneSpec,
    binary: &Path,
    data: &PreparedData,
    out_dir: &Path,
    step_scale: f64,
    isolation: &Isolation,
    on_event: &mut dyn FnMut(&Event),
) -> Result<FineTuneReport, CodeLabError> {
    std::fs::create_dir_all(out_dir).map_err(|e| CodeLabError::io(out_dir, e))?;
    let ckpt = out_dir.join(CHECKPOINT_FILE);
    let fixed: Vec<String> = vec![
        "--classes".to_string(),
        data.classes.to_string(),
        "--max-rank".into(),
        spec.max_rank.to_string(),
        "--max-steps".into(),
        spec.max_steps.to_string(),
        "--seed".into(),
        spec.seed.to_string(),
        "--eval-every".into(),
        spec.eval_every.to_string(),
        "--step-scale".into(),
        step_scale.to_string(),
    ];
    let job = Job {
        binary,
        input_dir: &data.dir,
        output_dir: out_dir,
        outputs: &[(CHECKPOINT_FILE, MAX_CHECKPOINT_BYTES)],
        limit: Duration::from_secs(spec.timeout_seconds),
        threads: lab.manifest.limits.threads,
        memory_bytes: lab.manifest.limits.memory_mb.max(1) << 20,
    };
    let ran = run_job(
        isolation,
        &job,
        &|input: &Path, output: &Path| {
            let mut a = vec![
                "train".to_string(),
                "--data".into(),
                input.display().to_string(),
                "--out".into(),
                output.display().to_string(),
            ];
            a.extend(fixed.iter().cloned());
            a
        },
        on_event,
    )?;
    let proc = ran.process;
    let reported_steps = proc.events.iter().rev().find_map(|e| match e {
        Event::Finished { steps, .. } => Some(*steps),
        _ => None,
    });
    let curve = CurveSummary::from_events(&proc.events, &lab.manifest.grading.metric);
    let reported_valid_metric = curve.evals.last().map(|e| e.1);
    let (outcome, rank) = if proc.exit != ExitKind::Success {
        (reject(proc.describe_failure()), None)
    } else if let Some(why) = ran.refused.get(CHECKPOINT_FILE) {
        (reject(format!("checkpoint rejected: {why}")), None)
    } else {
        match grade_run(lab, spec, &ckpt, Some(&curve)) {
            Ok(x) => x,
            Err(e) => (
                GradeOutcome::NotGradable {
                    reason: e.to_string(),
                },
                None,
            ),
        }
    };
    Ok(FineTuneReport {
        outcome,
        rank,
        rank_budget: spec.max_rank,
        reported_steps,
        reported_valid_metric,
        exit: proc.exit,
        wall_s: proc.wall_s,
        peak_rss_mib: proc.peak_rss_mib,
    })
}

#[derive(Deserialize)]
struct HeaderEntry {
    shape: Vec<usize>,
}

/// The shape of `name` in a safetensors header, without reading tensor data.
fn header_shape(path: &Path, name: &str) -> Result<Option<Vec<usize>>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8)
        .map_err(|_| "the checkpoint is not a safetensors file".to_string())?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER_BYTES {
        return Err(format!("the checkpoint header of {n} bytes is too large"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| "the checkpoint is truncated".to_string())?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("the checkpoint header is not a JSON object: {e}"))?;
    match raw.get(name) {
        None => Ok(None),
        Some(v) => serde_json::from_value::<HeaderEntry>(v.clone())
            .map(|e| Some(e.shape))
            .map_err(|e| format!("entry `{name}`: {e}")),
    }
}

fn frob(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// Grade a `train` checkpoint. `Ok((outcome, rank))`, where a broken rule
/// is a rejection; `Err` is an infrastructure failure.
pub fn grade_run(
    lab: &Lab,
    spec: &FineTuneSpec,
    checkpoint: &Path,
    curve: Option<&CurveSummary>,
) -> Result<(GradeOutcome, Option<usize>), CodeLabError> {
    let (s, _) = image_settings(lab)?;
    let base = base_weights(lab)?;
    let hidden = s.hidden;
    let d = s.channels[1] * 49;
    let classes = s.classes.len();
    let is_file = std::fs::symlink_metadata(checkpoint)
        .map(|m| m.file_type().is_file())
        .unwrap_or(false);
    if !is_file {
        return Ok((
            reject(format!(
                "your program finished without writing {CHECKPOINT_FILE} as a regular file"
            )),
            None,
        ));
    }
    let rank = match header_shape(checkpoint, names::FC_LORA_A) {
        Err(e) => return Ok((reject(format!("checkpoint rejected: {e}")), None)),
        Ok(None) => {
            return Ok((
                reject(format!(
                "checkpoint rejected: no `{}`: the adapter must be saved with the merged weights",
                names::FC_LORA_A
            )),
                None,
            ))
        }
        Ok(Some(shape)) => match shape.as_slice() {
            [r, i] if *i == d => *r,
            other => {
                return Ok((
                    reject(format!(
                        "checkpoint rejected: `{}` has shape {other:?}, expected [rank, {d}]",
                        names::FC_LORA_A
                    )),
                    None,
                ))
            }
        },
    };
    if rank == 0 || rank > spec.max_rank {
        return Ok((
            reject(format!(
                "the LoRA rank is {rank}, outside the lab's rank budget of 1 to {}",
                spec.max_rank
            )),
            Some(rank),
        ));
    }
    let specs = vec![
        TensorSpec::f32(names::FC_WEIGHT, &[hidden, d]),
        TensorSpec::f32(names::FC_BIAS, &[hidden]),
        TensorSpec::f32(names::FC_LORA_A, &[rank, d]),
        TensorSpec::f32(names::FC_LORA_B, &[hidden, rank]),
        TensorSpec::f32(names::HEAD_WEIGHT, &[classes, hidden]),
        TensorSpec::f32(names::HEAD_BIAS, &[classes]),
    ];
    let sub = match load_checked(checkpoint, &specs, &Device::Cpu) {
        Ok(w) => w,
        Err(e) => return Ok((reject(format!("checkpoint rejected: {e}")), Some(rank))),
    };
    let base_get = |k: &str| {
        base.get(k)
            .ok_or_else(|| CodeLabError::Other(format!("base checkpoint has no `{k}`")))
    };
    // The frozen bias must be the base's.
    let bias_diff = (&sub[names::FC_BIAS] - base_get(names::FC_BIAS)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    if bias_diff != 0.0 {
        return Ok((
            reject("checkpoint rejected: `fc.bias` differs from the frozen base bias; LoRA trains only A and B"),
            Some(rank),
        ));
    }
    // The update W' − W must be a multiple of B·A: rank ≤ budget.
    let w0 = base_get(names::FC_WEIGHT)?.to_dtype(DType::F64)?;
    let delta = (sub[names::FC_WEIGHT].to_dtype(DType::F64)? - &w0)?;
    let ba = sub[names::FC_LORA_B]
        .to_dtype(DType::F64)?
        .matmul(&sub[names::FC_LORA_A].to_dtype(DType::F64)?)?;
    let ba_sq = frob(&ba)?;
    let s_fit = if ba_sq > 0.0 {
        (&delta * &ba)?.sum_all()?.to_scalar::<f64>()? / ba_sq
    } else {
        0.0
    };
    let residual = frob(&(&delta - (&ba * s_fit)?)?)?.sqrt();
    let delta_norm = frob(&delta)?.sqrt();
    let w_norm = frob(&w0)?.sqrt();
    if residual > 1e-3 * delta_norm + 1e-6 * w_norm {
        return Ok((
            reject(format!(
                "checkpoint rejected: the merged `fc.weight` is not the base weight plus a multiple of B·A (relative residual {:.2e}); the update must come from the rank-{rank} adapter",
                residual / delta_norm.max(f64::MIN_POSITIVE)
            )),
            Some(rank),
        ));
    }
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    for k in ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"] {
        weights.insert(k.to_string(), base_get(k)?.clone());
    }
    for k in [
        names::FC_WEIGHT,
        names::FC_BIAS,
        names::HEAD_WEIGHT,
        names::HEAD_BIAS,
    ] {
        weights.insert(k.to_string(), sub[k].clone());
    }
    let program = program_for(lab)?;
    Ok((
        grade_weights(lab, program.as_ref(), &weights, curve),
        Some(rank),
    ))
}
