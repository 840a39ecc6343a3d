//! The trusted grader against hostile checkpoints, and "not gradable".

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use sanhak_runner::grade::checkpoint::{inspect, CheckpointError, MAX_HEADER_BYTES};
use sanhak_runner::grade::{grade_checkpoint, GradeOutcome};
use sanhak_runner::lab::Lab;
use sanhak_runner::programs::program_for;
use sanhak_runner::train::checkpoint::save_checkpoint;

fn lab() -> Lab {
    Lab::load(&common::fashion_dir()).unwrap()
}

fn good_weights(lab: &Lab) -> BTreeMap<String, Tensor> {
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
fn a_well_formed_checkpoint_is_graded() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ok.safetensors");
    save_checkpoint(&good_weights(&lab), &p).unwrap();
    match grade_checkpoint(&lab, &p, None) {
        GradeOutcome::Graded(r) => {
            assert_eq!(r.public.examples + r.private.examples, 1000);
            assert!(r.metric >= 0.0 && r.metric <= 1.0);
            let per_class = r.feedback.per_class.expect("per-class feedback");
            assert_eq!(per_class.len(), 5);
            let confusion = r.feedback.confusion.expect("confusion matrix");
            let total: u32 = confusion.iter().flatten().sum();
            assert_eq!(total as usize, r.public.examples);
        }
        other => panic!("expected a grade, got {other:?}"),
    }
}

#[test]
fn wrong_shape_is_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = good_weights(&lab);
    w.insert(
        "head.weight".into(),
        Tensor::zeros((4, 128), DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let p = tmp.path().join("shape.safetensors");
    save_checkpoint(&w, &p).unwrap();
    let r = rejected(&lab, &p);
    assert!(r.contains("head.weight") && r.contains("shape"), "{r}");
}

#[test]
fn wrong_dtype_is_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = good_weights(&lab);
    let t = w["fc.bias"].to_dtype(DType::F64).unwrap();
    w.insert("fc.bias".into(), t);
    let p = tmp.path().join("dtype.safetensors");
    save_checkpoint(&w, &p).unwrap();
    let r = rejected(&lab, &p);
    assert!(r.contains("fc.bias") && r.contains("dtype"), "{r}");
}

#[test]
fn extra_and_missing_tensors_are_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = good_weights(&lab);
    w.insert(
        "backdoor".into(),
        Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let p = tmp.path().join("extra.safetensors");
    save_checkpoint(&w, &p).unwrap();
    assert!(rejected(&lab, &p).contains("unexpected tensor `backdoor`"));

    let mut w = good_weights(&lab);
    w.remove("conv2.bias");
    let p = tmp.path().join("missing.safetensors");
    save_checkpoint(&w, &p).unwrap();
    assert!(rejected(&lab, &p).contains("missing tensor `conv2.bias`"));
}

#[test]
fn nan_and_inf_weights_are_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut w = good_weights(&lab);
        let mut v: Vec<f32> = w["fc.weight"].flatten_all().unwrap().to_vec1().unwrap();
        v[7] = bad;
        let shape = w["fc.weight"].shape().clone();
        w.insert(
            "fc.weight".into(),
            Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap(),
        );
        let p = tmp.path().join("nan.safetensors");
        save_checkpoint(&w, &p).unwrap();
        let r = rejected(&lab, &p);
        assert!(r.contains("fc.weight") && r.contains("NaN"), "{r}");
    }
}

#[test]
fn huge_header_is_rejected_before_allocation() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("huge.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, &bytes).unwrap();
    let spec = program_for(&lab).unwrap().checkpoint_spec(&lab).unwrap();
    assert_eq!(
        inspect(&p, &spec),
        Err(CheckpointError::HeaderTooLarge(1 << 40))
    );
    assert!(rejected(&lab, &p).contains("header"));
    // Just over the limit is refused too.
    let mut bytes = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(
        inspect(&p, &spec),
        Err(CheckpointError::HeaderTooLarge(MAX_HEADER_BYTES + 1))
    );
}

#[test]
fn truncated_file_is_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ok.safetensors");
    save_checkpoint(&good_weights(&lab), &p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    for cut in [4, 40, bytes.len() / 2, bytes.len() - 1] {
        let q = tmp.path().join("cut.safetensors");
        std::fs::write(&q, &bytes[..cut]).unwrap();
        let r = rejected(&lab, &q);
        assert!(
            r.contains("truncated") || r.contains("offsets") || r.contains("not a safetensors"),
            "cut at {cut}: {r}"
        );
    }
}

#[test]
fn non_safetensors_is_rejected() {
    let lab = lab();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("model.pt");
    std::fs::write(
        &p,
        b"\x80\x02cbuiltins\neval\nq\x00X\x06\x00\x00\x00rm -rfq\x01\x85q\x02Rq\x03.",
    )
    .unwrap();
    let r = rejected(&lab, &p);
    assert!(r.contains("checkpoint rejected"), "{r}");
    let p = tmp.path().join("garbage.safetensors");
    let mut bytes = 10u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"not json!!");
    std::fs::write(&p, &bytes).unwrap();
    assert!(rejected(&lab, &p).contains("not a safetensors file"));
}

#[test]
fn missing_hidden_data_is_not_gradable_not_zero() {
    let (_tmp, dir) = common::lab_copy();
    let lab = Lab::load(&dir).unwrap();
    let p = dir.join("ok.safetensors");
    save_checkpoint(&good_weights(&lab), &p).unwrap();
    std::fs::remove_file(dir.join("hidden/test-labels.idx1")).unwrap();
    let outcome = grade_checkpoint(&lab, &p, None);
    assert!(
        matches!(outcome, GradeOutcome::NotGradable { .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.points(), None);
}
