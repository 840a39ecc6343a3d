//! The korean-lm-adapt lab: the grader against hostile checkpoints for the
//! byte-level GPT, and a quick `lab check`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use sanhak_runner::check::{check_lab, CheckOptions};
use sanhak_runner::grade::{grade_checkpoint, GradeOutcome};
use sanhak_runner::lab::Lab;
use sanhak_runner::programs::program_for;
use sanhak_runner::train::checkpoint::save_checkpoint;
use sanhak_runner::train::RunOptions;

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/korean-lm-adapt")
}

fn lab() -> Lab {
    Lab::load(&lab_dir()).unwrap()
}

fn base_weights(lab: &Lab) -> BTreeMap<String, Tensor> {
    program_for(lab)
        .unwrap()
        .initial_weights(lab, 0)
        .unwrap()
        .into_iter()
        .collect()
}

fn rejected(lab: &Lab, path: &Path) -> String {
    match grade_checkpoint(lab, path, None) {
        GradeOutcome::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_base_model_is_graded_in_bits_per_byte() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("base.safetensors");
    save_checkpoint(&base_weights(&lab), &p).unwrap();
    assert!(
        std::fs::metadata(lab.base_checkpoint_path().unwrap())
            .unwrap()
            .len()
            <= 5 << 20
    );
    match grade_checkpoint(&lab, &p, None) {
        GradeOutcome::Graded(r) => {
            assert_eq!(r.metric_name, "bits_per_byte");
            // A trained byte model is far better than uniform (8 bits) on its
            // own script, but the legal domain is new to it.
            assert!(r.metric > 1.0 && r.metric < 8.0, "{}", r.metric);
            assert!(r.public.examples > 50 && r.private.examples > 50);
            assert!(r.feedback.public_metric.is_some() && r.feedback.private_metric.is_some());
            assert!(
                r.points < 50.0,
                "the base must not already earn half the points"
            );
        }
        other => panic!("expected a grade, got {other:?}"),
    }
}

#[test]
fn wrong_shape_is_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = base_weights(&lab);
    // A wider context than the reference architecture.
    let wpe = w["wpe.weight"].clone();
    let (t, c) = wpe.dims2().unwrap();
    w.insert(
        "wpe.weight".into(),
        Tensor::zeros((2 * t, c), DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let p = tmp.path().join("shape.safetensors");
    save_checkpoint(&w, &p).unwrap();
    let reason = rejected(&lab, &p);
    assert!(reason.contains("wpe.weight"), "{reason}");
}

#[test]
fn missing_tensor_is_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = base_weights(&lab);
    w.remove("h.1.mlp.c_fc.weight").unwrap();
    let p = tmp.path().join("missing.safetensors");
    save_checkpoint(&w, &p).unwrap();
    let reason = rejected(&lab, &p);
    assert!(reason.contains("h.1.mlp.c_fc.weight"), "{reason}");
}

#[test]
fn unmerged_lora_adapters_are_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = base_weights(&lab);
    let c = w["wte.weight"].dim(1).unwrap();
    w.insert(
        "h.0.attn.c_attn.lora_a".into(),
        Tensor::zeros((4, c), DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let p = tmp.path().join("lora.safetensors");
    save_checkpoint(&w, &p).unwrap();
    let reason = rejected(&lab, &p);
    assert!(reason.contains("lora_a"), "{reason}");
}

#[test]
fn quick_lab_check_of_korean_lm_adapt_passes() {
    let opts = CheckOptions {
        run: RunOptions::scaled(0.1),
        work_dir: None,
        models_dir: None,
    };
    let report = check_lab(&lab_dir(), &opts, &mut |_| {}).unwrap();
    assert!(report.passed(), "{:?}", report.failures);
    let starter = report.starter.outcome.points().unwrap();
    let solution = report.solution.outcome.points().unwrap();
    assert!(
        starter < 50.0 && solution > starter,
        "starter {starter}, solution {solution}"
    );
}
