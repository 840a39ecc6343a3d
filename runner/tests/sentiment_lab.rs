//! The sentiment-finetune lab: its own byte-level encoder (no shared model)
//! and all-MiniLM-L6-v2 when installed; hostile checkpoints; determinism; a
//! quick `lab check` with each encoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sanhak_runner::check::{check_lab, load_recipe, CheckOptions};
use sanhak_runner::grade::{grade_checkpoint, GradeOutcome};
use sanhak_runner::lab::Lab;
use sanhak_runner::programs::{program_for, run_program};
use sanhak_runner::train::checkpoint::save_checkpoint;
use sanhak_runner::train::events::VecSink;
use sanhak_runner::train::RunOptions;

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/sentiment-finetune")
}

fn lab() -> Lab {
    Lab::load(&lab_dir()).unwrap()
}

/// A models folder holding all-MiniLM-L6-v2 (a link to the fetched copy),
/// or `None` where it is not installed and `SANHAK_SKIP_MINILM=1` allows
/// that. CI fetches it first (`sanhak model fetch minilm`).
fn minilm_models_dir() -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = match std::env::var_os("SANHAK_MINILM_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/models/all-MiniLM-L6-v2"),
    };
    if !dir.join("model.safetensors").is_file() {
        if std::env::var("SANHAK_SKIP_MINILM").as_deref() == Ok("1") {
            return None;
        }
        panic!(
            "all-MiniLM-L6-v2 is not at {}: run `sanhak model fetch minilm` (or set \
             SANHAK_MINILM_DIR; SANHAK_SKIP_MINILM=1 skips the MiniLM tests)",
            dir.display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(&dir).unwrap(),
        models.join("all-MiniLM-L6-v2"),
    )
    .unwrap();
    Some((tmp, models))
}

fn initial(lab: &Lab) -> BTreeMap<String, Tensor> {
    program_for(lab)
        .unwrap()
        .initial_weights(lab, 0)
        .unwrap()
        .into_iter()
        .collect()
}

fn grade(lab: &Lab, w: &BTreeMap<String, Tensor>) -> GradeOutcome {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("model.safetensors");
    save_checkpoint(w, &p).unwrap();
    grade_checkpoint(lab, &p, None)
}

fn rejected(lab: &Lab, w: &BTreeMap<String, Tensor>) -> String {
    match grade(lab, w) {
        GradeOutcome::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_own_encoder_is_small_and_starts_near_chance() {
    let lab = lab();
    let program = program_for(&lab).unwrap();
    assert_eq!(program.variant(&lab), None);
    let base = lab.base_checkpoint_path().unwrap();
    assert!(std::fs::metadata(&base).unwrap().len() <= 5 << 20);
    match grade(&lab, &initial(&lab)) {
        GradeOutcome::Graded(r) => {
            assert_eq!(r.metric_name, "accuracy");
            // A fresh head on two balanced classes.
            assert!(r.metric > 0.3 && r.metric < 0.7, "{}", r.metric);
            assert!(r.points < 50.0);
            let per_class = r.feedback.per_class.expect("per-class feedback");
            assert_eq!(per_class.len(), 2);
            assert_eq!(r.feedback.confusion.expect("confusion").len(), 2);
            assert!(r.public.examples + r.private.examples == 603);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_checkpoints_are_rejected() {
    let lab = lab();
    let w = initial(&lab);
    let dev = Device::Cpu;

    let mut wrong_head = w.clone();
    wrong_head.insert(
        "classifier.weight".into(),
        Tensor::zeros((3, 128), DType::F32, &dev).unwrap(),
    );
    assert!(rejected(&lab, &wrong_head).contains("classifier.weight"));

    let mut missing = w.clone();
    missing.remove("encoder.layer.1.output.dense.weight");
    assert!(rejected(&lab, &missing).contains("encoder.layer.1.output.dense.weight"));

    let mut adapter = w.clone();
    adapter.insert(
        "encoder.layer.0.attention.self.query.lora_a".into(),
        Tensor::zeros((4, 128), DType::F32, &dev).unwrap(),
    );
    assert!(rejected(&lab, &adapter).contains("lora_a"));

    let mut nan = w.clone();
    let shape = nan["classifier.bias"].dims().to_vec();
    nan.insert(
        "classifier.bias".into(),
        Tensor::full(f32::NAN, shape, &dev).unwrap(),
    );
    assert!(rejected(&lab, &nan).contains("classifier.bias"));
}

#[test]
fn the_same_recipe_and_seed_give_the_same_model() {
    let lab = lab();
    let recipe = load_recipe(&lab, &lab.dir().join("solution/recipe.toml")).unwrap();
    let opts = RunOptions::scaled(0.02);
    let run = || {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = VecSink::default();
        let out = run_program(&lab, &recipe, tmp.path(), &opts, &mut sink).unwrap();
        (out.valid_metric, std::fs::read(out.checkpoint).unwrap())
    };
    let (m1, bytes1) = run();
    let (m2, bytes2) = run();
    assert!(m1.is_some());
    assert_eq!(m1, m2);
    assert!(bytes1 == bytes2, "checkpoints differ");
}

#[test]
fn quick_lab_check_with_the_own_encoder_passes() {
    let opts = CheckOptions {
        run: RunOptions::scaled(0.15),
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

#[test]
fn with_minilm_installed_the_lab_fine_tunes_it() {
    let Some((_tmp, models)) = minilm_models_dir() else {
        return;
    };
    let lab = lab().with_models_dir(&models);
    let program = program_for(&lab).unwrap();
    assert_eq!(program.variant(&lab).as_deref(), Some("all-MiniLM-L6-v2"));
    let g = program.grading(&lab).unwrap();
    assert_eq!((g.baseline, g.target), (0.5, 0.88));
    let spec = program.checkpoint_spec(&lab).unwrap();
    let head = spec.iter().find(|s| s.name == "classifier.weight").unwrap();
    assert_eq!(head.shape, vec![2, 384]);
    // The byte encoder's checkpoint does not fit MiniLM.
    let own = initial(&Lab::load(&lab_dir()).unwrap());
    assert!(!rejected(&lab, &own).is_empty());

    let opts = CheckOptions {
        run: RunOptions::scaled(0.15),
        work_dir: None,
        models_dir: Some(models.clone()),
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
