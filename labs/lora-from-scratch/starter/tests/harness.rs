//! Runs this crate's binary the way the grader does (a child process
//! speaking labkit's harness protocol), on one small public case.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use labkit::candle::{Device, Tensor};
use labkit::harness::names;
use labkit::init::SeededRng;
use labkit::lora::FrozenLinear;

const BIN: &str = env!("CARGO_BIN_EXE_lora-from-scratch-starter");

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// One case: x [3, 5], W [4, 5] with bias, rank 2, alpha 3.
fn write_case(path: &Path) -> BTreeMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(11);
    let mut t = BTreeMap::new();
    t.insert(
        "c.x".to_string(),
        rng.uniform((3, 5), -1.0, 1.0, &dev).unwrap(),
    );
    t.insert(
        "c.weight".to_string(),
        rng.uniform((4, 5), -0.4, 0.4, &dev).unwrap(),
    );
    t.insert(
        "c.bias".to_string(),
        rng.uniform(4, -0.1, 0.1, &dev).unwrap(),
    );
    t.insert(
        "c.lora_a".to_string(),
        rng.uniform((2, 5), -0.5, 0.5, &dev).unwrap(),
    );
    t.insert(
        "c.lora_b".to_string(),
        rng.uniform((4, 2), -0.5, 0.5, &dev).unwrap(),
    );
    t.insert("c.alpha".to_string(), Tensor::new(&[3f32], &dev).unwrap());
    t.insert(
        "c.grad_out".to_string(),
        rng.uniform((3, 4), -1.0, 1.0, &dev).unwrap(),
    );
    labkit::checkpoint::save(&t, path).unwrap();
    t
}

#[test]
fn a_bad_command_line_exits_with_status_2_and_the_usage() {
    let out = Command::new(BIN).arg("dance").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown subcommand") && err.contains("usage"),
        "{err}"
    );
}

#[test]
fn a_rank_above_the_budget_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["train", "--data"])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path())
        .args(["--classes", "5", "--max-rank", "1", "--max-steps", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank budget 1..=1"), "{err}");
}

#[test]
fn numerics_start_equal_to_the_base_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    let t = write_case(&inp);
    let status = Command::new(BIN)
        .arg("numerics")
        .arg("--inputs")
        .arg(&inp)
        .arg("--out")
        .arg(&outp)
        .status()
        .unwrap();
    assert!(status.success());
    let out = labkit::checkpoint::load(&outp, 1 << 20).unwrap();
    let base = FrozenLinear::new(t["c.weight"].clone(), Some(t["c.bias"].clone())).unwrap();
    let want = base.forward(&t["c.x"]).unwrap();
    assert_eq!(max_diff(&out[&format!("c.{}", names::INIT_Y)], &want), 0.0);
    assert_eq!(out[&format!("c.{}", names::INIT_A)].dims(), &[2, 5]);
    assert_eq!(out[&format!("c.{}", names::INIT_B)].dims(), &[4, 2]);
}
