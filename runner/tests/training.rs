//! Determinism of training and the quick `lab check` of fashion-transfer.

mod common;

use sanhak_runner::check::{check_lab, CheckOptions};
use sanhak_runner::grade::{grade_checkpoint, GradeOutcome};
use sanhak_runner::lab::Lab;
use sanhak_runner::programs::run_program;
use sanhak_runner::train::events::{Event, VecSink};
use sanhak_runner::train::RunOptions;

fn graded_metric(lab: &Lab, path: &std::path::Path) -> (f64, f64) {
    match grade_checkpoint(lab, path, None) {
        GradeOutcome::Graded(r) => (r.metric, r.public.metric),
        other => panic!("{other:?}"),
    }
}

#[test]
fn same_recipe_and_seed_give_identical_results() {
    let lab = Lab::load(&common::fashion_dir()).unwrap();
    let schema = lab.schema().unwrap();
    let text = "learning_rate = 3e-3\nsteps = 12\nbatch_size = 16\nfrozen = [\"conv1\"]\ndropout = 0.3\neval_every = 6\nseed = 5";
    let recipe = schema.validate(text, "recipe.toml").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let mut sink = VecSink::default();
        let out = run_program(
            &lab,
            &recipe,
            &tmp.path().join(name),
            &RunOptions::default(),
            &mut sink,
        )
        .unwrap();
        let losses: Vec<f64> = sink
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Step { loss, .. } => Some(*loss),
                _ => None,
            })
            .collect();
        assert_eq!(losses.len(), 12);
        let bytes = std::fs::read(&out.checkpoint).unwrap();
        runs.push((losses, bytes, graded_metric(&lab, &out.checkpoint)));
    }
    assert_eq!(runs[0].0, runs[1].0, "loss curves differ");
    assert!(runs[0].1 == runs[1].1, "checkpoints differ");
    assert_eq!(runs[0].2, runs[1].2, "metrics differ");

    let other = schema
        .validate(&text.replace("seed = 5", "seed = 6"), "recipe.toml")
        .unwrap();
    let out = run_program(
        &lab,
        &other,
        &tmp.path().join("c"),
        &RunOptions::default(),
        &mut VecSink::default(),
    )
    .unwrap();
    assert!(
        std::fs::read(&out.checkpoint).unwrap() != runs[0].1,
        "a different seed changed nothing"
    );
}

#[test]
fn quick_lab_check_of_fashion_transfer_passes() {
    let opts = CheckOptions {
        run: RunOptions::scaled(0.25),
        work_dir: None,
        models_dir: None,
    };
    let mut phases = Vec::new();
    let report = check_lab(&common::fashion_dir(), &opts, &mut |p| {
        if let sanhak_runner::check::CheckProgress::Phase(name) = p {
            phases.push(name.to_string());
        }
    })
    .unwrap();
    assert!(report.passed(), "{:?}", report.failures);
    assert_eq!(phases.last().map(String::as_str), Some("solution"));
    let starter = report.starter.outcome.points().unwrap();
    let solution = report.solution.outcome.points().unwrap();
    assert!(
        starter < 50.0 && solution > starter,
        "starter {starter}, solution {solution}"
    );
}

#[test]
fn lab_check_fails_when_the_starter_is_too_good() {
    let (_tmp, dir) = common::lab_copy();
    std::fs::copy(
        dir.join("solution/recipe.toml"),
        dir.join("starter/recipe.toml"),
    )
    .unwrap();
    let opts = CheckOptions {
        run: RunOptions::scaled(0.25),
        work_dir: None,
        models_dir: None,
    };
    let report = check_lab(&dir, &opts, &mut |_| {}).unwrap();
    assert!(!report.passed());
    assert!(
        report.failures.iter().any(|f| f.contains("starter")),
        "{:?}",
        report.failures
    );
}

/// A run asked to train on CUDA trains there or fails before its first step:
/// it never falls back to the CPU while holding a GPU. On a `cuda` build with
/// a GPU, the CUDA run must learn as the CPU run does.
#[test]
fn a_run_trains_on_the_device_it_is_given_or_not_at_all() {
    use sanhak_runner::train::TrainDevice;

    let lab = Lab::load(&common::fashion_dir()).unwrap();
    let recipe = lab
        .schema()
        .unwrap()
        .validate(
            "learning_rate = 3e-3\nsteps = 20\nbatch_size = 16\neval_every = 10\nseed = 2",
            "recipe.toml",
        )
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cuda = RunOptions {
        device: TrainDevice::Cuda(0),
        ..RunOptions::default()
    };
    let mut sink = VecSink::default();
    let result = run_program(&lab, &recipe, &tmp.path().join("cuda"), &cuda, &mut sink);
    if !TrainDevice::cuda_built() {
        let e = match result {
            Err(e) => e.to_string(),
            Ok(out) => panic!("cuda:0 trained on a build without CUDA: {out:?}"),
        };
        assert!(e.contains("built without the `cuda` feature"), "{e}");
        assert!(
            !sink.events.iter().any(|e| matches!(e, Event::Step { .. })),
            "it trained anyway: {:?}",
            sink.events
        );
        assert!(!tmp.path().join("cuda/model.safetensors").exists());
        return;
    }
    let Ok(on_gpu) = result else {
        // A CUDA build on a host without a usable GPU: the error names the device.
        let e = result.err().unwrap().to_string();
        assert!(e.contains("cuda:0"), "{e}");
        return;
    };
    let on_cpu = run_program(
        &lab,
        &recipe,
        &tmp.path().join("cpu"),
        &RunOptions::default(),
        &mut VecSink::default(),
    )
    .unwrap();
    let (gpu_metric, _) = graded_metric(&lab, &on_gpu.checkpoint);
    let (cpu_metric, _) = graded_metric(&lab, &on_cpu.checkpoint);
    assert!(
        (gpu_metric - cpu_metric).abs() < 0.05,
        "CUDA run graded {gpu_metric}, CPU run {cpu_metric}"
    );
}
