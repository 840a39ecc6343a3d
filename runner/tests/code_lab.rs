//! The `lora-from-scratch` code lab: labkit's process protocol, the hidden
//! numerical tests, the graded fine-tuning run and `lab check`.
//!
//! The starter and the solution are workspace members, so `cargo build` and
//! `cargo test --workspace` build their binaries next to this test; they are
//! run exactly as the runner service runs a submission (a child process).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sanhak_runner::codelab::check::{check_code_lab, Binaries, CodeCheckOptions};
use sanhak_runner::codelab::finetune::{self, base_weights, conv_features, grade_run};
use sanhak_runner::codelab::numerics::run_numerics;
use sanhak_runner::codelab::process::ExitKind;
use sanhak_runner::codelab::{code_spec, grade_submission, CodeOutcome, GradeOptions};
use sanhak_runner::grade::GradeOutcome;
use sanhak_runner::lab::Lab;
use sanhak_runner::programs::image;
use sanhak_runner::train::events::Event;

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/lora-from-scratch")
}

fn lab() -> Lab {
    Lab::load(&lab_dir()).unwrap()
}

/// A binary of the workspace, built next to this test (`target/<profile>/`).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let p = profile_dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo test --workspace`, or `cargo build -p {name}` before this test",
        p.display()
    );
    p
}

/// The newest modification time of the files in `dir` (recursively).
fn newest(dir: &Path) -> std::time::SystemTime {
    let mut t = std::time::SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        let mt = if m.is_dir() {
            newest(&e.path())
        } else {
            m.modified().unwrap()
        };
        t = t.max(mt);
    }
    t
}

/// A lab crate's binary, refusing one older than its sources or labkit's
/// (`cargo test -p sanhak-runner` alone does not rebuild it).
fn lab_bin(kind: &str) -> PathBuf {
    let name = format!("lora-from-scratch-{kind}");
    let p = bin(&name);
    let built = std::fs::metadata(&p).unwrap().modified().unwrap();
    let labkit = Path::new(env!("CARGO_MANIFEST_DIR")).join("labkit/src");
    let sources = newest(&lab_dir().join(kind).join("src")).max(newest(&labkit));
    assert!(
        built >= sources,
        "{} is older than its sources: run `cargo build -p {name}` (cargo test --workspace does)",
        p.display()
    );
    p
}

fn starter_bin() -> PathBuf {
    lab_bin("starter")
}

fn solution_bin() -> PathBuf {
    lab_bin("solution")
}

/// An executable shell script standing in for a student's program.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn load_error(edit: impl FnOnce(String) -> String) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lora-from-scratch");
    common::copy_tree(&lab_dir(), &dir);
    let text = std::fs::read_to_string(dir.join("lab.toml")).unwrap();
    std::fs::write(dir.join("lab.toml"), edit(text)).unwrap();
    Lab::load(&dir).unwrap_err().to_string()
}

#[test]
fn the_code_lab_loads_and_bad_code_tables_are_named() {
    let lab = lab();
    let spec = code_spec(&lab).unwrap();
    assert_eq!(spec.fine_tune.max_rank, 8);
    assert_eq!(spec.numerics_points() + lab.manifest.grading.points, 100.0);

    let e = load_error(|t| t.replace("tolerance = 1e-4", "tolerance = 1e-4\ncolour = 1"));
    assert!(e.contains("lab.toml") && e.contains("colour"), "{e}");
    let e = load_error(|t| t.replace("max_rank = 8", "max_rank = 0"));
    assert!(e.contains("code.fine_tune.max_rank"), "{e}");
    let e = load_error(|t| t.replace("merge = 15", "speed = 15"));
    assert!(
        e.contains("code.numerics.points.speed") && e.contains("gradients"),
        "{e}"
    );
    let e = load_error(|t| t.replace("harness = \"lora\"", "harness = \"gpt\""));
    assert!(e.contains("code.harness"), "{e}");
    let e = load_error(|t| t.replace("solution = \"solution\"", "solution = \"../solution\""));
    assert!(e.contains("code.solution"), "{e}");
    let e = load_error(|t| {
        let start = t.find("[code]").unwrap();
        let end = t.find("# The fine-tuning part").unwrap();
        format!("{}{}", &t[..start], &t[end..])
    });
    assert!(e.contains("field `code`") && e.contains("code lab"), "{e}");
    let e = load_error(|t| t.replace("kind = \"code\"", "kind = \"recipe\""));
    assert!(e.contains("recipe"), "{e}");
}

#[test]
fn labkit_events_parse_as_runner_events() {
    let events = vec![
        labkit::events::Event::Started {
            program: "labkit-lora".into(),
            seed: 3,
            total_steps: 10,
            trainable_params: 99,
        },
        labkit::events::Event::Step {
            step: 1,
            loss: 1.25,
            lr: 1e-3,
            grad_norm: 0.5,
            elapsed_s: 0.1,
        },
        labkit::events::Event::Eval {
            step: 1,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.75)]),
            elapsed_s: 0.2,
        },
        labkit::events::Event::Checkpoint {
            path: "model.safetensors".into(),
            bytes: 12,
        },
        labkit::events::Event::Finished {
            steps: 1,
            elapsed_s: 0.3,
        },
    ];
    let mut r = labkit::events::Reporter::new(Vec::new());
    for e in &events {
        r.emit(e);
    }
    let text = String::from_utf8(r.into_inner()).unwrap();
    let parsed: Vec<Event> = text
        .lines()
        .map(|l| Event::from_json_line(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), events.len());
    assert_eq!(
        parsed[1],
        Event::Step {
            step: 1,
            loss: 1.25,
            lr: 1e-3,
            grad_norm: 0.5,
            elapsed_s: 0.1
        }
    );
    assert!(matches!(&parsed[2], Event::Eval { metrics, .. } if metrics["accuracy"] == 0.75));
}

#[test]
fn prepared_features_give_the_image_programs_logits() {
    let lab = lab();
    let base = base_weights(&lab).unwrap();
    let set = image::load_set(
        &lab.public_file("valid", "images").unwrap(),
        &lab.public_file("valid", "labels").unwrap(),
        5,
        5,
    )
    .unwrap();
    let images = set.images.narrow(0, 0, 40).unwrap();
    let feats = conv_features(&base, &images).unwrap();
    assert_eq!(feats.dims(), &[40, 32 * 49]);
    // A random head on the base fc: the features path and the program's forward agree.
    let mut w: BTreeMap<String, Tensor> = base.clone().into_iter().collect();
    let head = Tensor::randn(0f32, 0.1, (5, 128), &Device::Cpu).unwrap();
    w.insert("head.weight".into(), head.clone());
    w.insert(
        "head.bias".into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    let want = image::forward(&w, &images, None).unwrap();
    let got = feats
        .matmul(&w["fc.weight"].t().unwrap())
        .unwrap()
        .broadcast_add(&w["fc.bias"])
        .unwrap()
        .relu()
        .unwrap()
        .matmul(&head.t().unwrap())
        .unwrap();
    let diff = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn the_solution_passes_every_numerical_test_and_the_starter_fails_most() {
    let lab = lab();
    let spec = &code_spec(&lab).unwrap().numerics;
    let tmp = tempfile::tempdir().unwrap();
    let sol = run_numerics(
        spec,
        &solution_bin(),
        &tmp.path().join("sol"),
        2,
        &mut |_| {},
    )
    .unwrap();
    for t in &sol.tests {
        assert!(t.passed, "solution: {}", t.message);
    }
    assert_eq!(sol.points, sol.max_points);
    assert_eq!(sol.max_points, 60.0);

    let st = run_numerics(spec, &starter_bin(), &tmp.path().join("st"), 2, &mut |_| {}).unwrap();
    let passed: Vec<&str> = st
        .tests
        .iter()
        .filter(|t| t.passed)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(passed, vec!["init"], "{:#?}", st.tests);
    let forward = st.tests.iter().find(|t| t.name == "forward").unwrap();
    assert!(
        forward.message.contains("`y` is off by") && forward.message.contains("Hint"),
        "{}",
        forward.message
    );
    let grads = st.tests.iter().find(|t| t.name == "gradients").unwrap();
    assert!(grads.message.contains("grad_a"), "{}", grads.message);
}

#[test]
fn crashes_timeouts_and_bad_outputs_fail_the_tests_with_a_clear_message() {
    let lab = lab();
    let mut spec = code_spec(&lab).unwrap().numerics.clone();
    spec.timeout_seconds = 2;
    let tmp = tempfile::tempdir().unwrap();
    let run =
        |bin: &Path| run_numerics(&spec, bin, &tmp.path().join("work"), 2, &mut |_| {}).unwrap();

    let crash = script(
        tmp.path(),
        "crash",
        "echo 'thread main panicked at src/lib.rs:3' >&2\nexit 101",
    );
    let r = run(&crash);
    assert_eq!(r.exit, ExitKind::Failed { code: 101 });
    assert_eq!(r.points, 0.0);
    assert!(
        r.tests.iter().all(|t| !t.passed
            && t.message.contains("exited with status 101")
            && t.message.contains("panicked at src/lib.rs:3")),
        "{:#?}",
        r.tests
    );

    let hang = script(tmp.path(), "hang", "exec sleep 30");
    let r = run(&hang);
    assert_eq!(r.exit, ExitKind::TimedOut { limit_s: 2 });
    assert!(r.wall_s < 10.0, "the hanging program was not stopped");
    assert!(
        r.tests[0].message.contains("time limit of 2 s"),
        "{}",
        r.tests[0].message
    );

    // A child that leaves a grandchild holding its output open is stopped too.
    let orphan = script(tmp.path(), "orphan", "sleep 30 &\nsleep 30");
    let r = run(&orphan);
    assert_eq!(r.exit, ExitKind::TimedOut { limit_s: 2 });
    assert!(r.wall_s < 10.0, "a grandchild kept the grader waiting");

    // The program sees none of the grader's environment, only its thread count.
    let env_file = tmp.path().join("env.txt");
    let snoop = script(
        tmp.path(),
        "snoop",
        &format!("/usr/bin/env > '{}'", env_file.display()),
    );
    run(&snoop);
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("RAYON_NUM_THREADS=2"), "{env}");
    assert!(
        !env.contains("CARGO"),
        "the grader's environment leaked: {env}"
    );

    let abort = script(tmp.path(), "abort", "kill -9 $$");
    let r = run(&abort);
    assert!(
        matches!(r.exit, ExitKind::Crashed { signal: Some(9) }),
        "{:?}",
        r.exit
    );
    assert!(
        r.tests[0].message.contains("crashed"),
        "{}",
        r.tests[0].message
    );

    // Exit 0 while printing success, with garbage as output: the output decides.
    let liar = script(
        tmp.path(),
        "liar",
        "echo '{\"event\":\"log\",\"message\":\"all tests passed\"}'\nprintf 'garbage' > \"$5\"",
    );
    let r = run(&liar);
    assert_eq!(r.exit, ExitKind::Success);
    assert_eq!(r.points, 0.0);
    assert!(
        r.tests[0].message.contains("not a valid safetensors"),
        "{}",
        r.tests[0].message
    );

    // The right names with the wrong shape, dtype or NaN.
    let forged = tmp.path().join("forged.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "c0.y".to_string(),
        Tensor::zeros((5, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "c1.y".to_string(),
        Tensor::zeros((3, 17), DType::F64, &Device::Cpu).unwrap(),
    );
    t.insert(
        "c0.merged".to_string(),
        Tensor::new(&[[f32::NAN; 6]; 5], &Device::Cpu).unwrap(),
    );
    labkit::checkpoint::save(&t, &forged).unwrap();
    let forger = script(
        tmp.path(),
        "forger",
        &format!("cp '{}' \"$5\"", forged.display()),
    );
    let r = run(&forger);
    let msg = |name: &str| {
        r.tests
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .message
            .clone()
    };
    assert!(
        msg("forward").contains("shape [5, 4], expected [4, 5]"),
        "{}",
        msg("forward")
    );
    assert!(msg("merge").contains("NaN"), "{}", msg("merge"));
    assert!(
        msg("batched").contains("did not produce `y`"),
        "{}",
        msg("batched")
    );

    // A program that cannot be started is the grader's problem: not gradable.
    let missing = tmp.path().join("no-such-program");
    assert!(run_numerics(&spec, &missing, &tmp.path().join("w2"), 2, &mut |_| {}).is_err());
    let data = finetune::PreparedData {
        dir: tmp.path().to_path_buf(),
        classes: 5,
        examples: BTreeMap::new(),
    };
    let out = grade_submission(
        &lab,
        &missing,
        &data,
        &GradeOptions {
            step_scale: 1.0,
            work_dir: tmp.path().join("w3"),
        },
        &mut |_| {},
    );
    assert!(
        matches!(&out, CodeOutcome::NotGradable { reason } if reason.contains("cannot start")),
        "{out:?}"
    );
}

/// A fine-tuning checkpoint: the base fc, an adapter of `rank`, a head.
fn checkpoint(
    lab: &Lab,
    rank: usize,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>),
) -> tempfile::NamedTempFile {
    let base = base_weights(lab).unwrap();
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 0.02, (rank, 1568), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.02, (128, rank), &dev).unwrap();
    let merged = (&base["fc.weight"] + (b.matmul(&a).unwrap() * 2.0).unwrap()).unwrap();
    let mut t = BTreeMap::new();
    t.insert("fc.weight".to_string(), merged);
    t.insert("fc.bias".to_string(), base["fc.bias"].clone());
    t.insert("fc.lora_a".to_string(), a);
    t.insert("fc.lora_b".to_string(), b);
    t.insert(
        "head.weight".to_string(),
        Tensor::randn(0f32, 0.1, (5, 128), &dev).unwrap(),
    );
    t.insert(
        "head.bias".to_string(),
        Tensor::zeros(5, DType::F32, &dev).unwrap(),
    );
    edit(&mut t);
    let f = tempfile::NamedTempFile::new().unwrap();
    labkit::checkpoint::save(&t, f.path()).unwrap();
    f
}

#[test]
fn fine_tuning_checkpoints_that_break_the_rules_are_rejected() {
    let lab = lab();
    let spec = code_spec(&lab).unwrap().fine_tune.clone();
    let grade = |f: &tempfile::NamedTempFile| grade_run(&lab, &spec, f.path(), None).unwrap();

    let (ok, rank) = grade(&checkpoint(&lab, 8, |_| {}));
    assert!(matches!(ok, GradeOutcome::Graded(_)), "{ok:?}");
    assert_eq!(rank, Some(8));

    let reason = |o: GradeOutcome| match o {
        GradeOutcome::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };
    let (o, rank) = grade(&checkpoint(&lab, 16, |_| {}));
    assert_eq!(rank, Some(16));
    assert!(reason(o).contains("rank budget of 1 to 8"));

    // A full-rank update smuggled in with a small adapter.
    let (o, _) = grade(&checkpoint(&lab, 4, |t| {
        let w = &t["fc.weight"];
        let noise = Tensor::randn(0f32, 0.01, w.shape(), &Device::Cpu).unwrap();
        t.insert("fc.weight".into(), (w + noise).unwrap());
    }));
    assert!(reason(o).contains("not the base weight plus a multiple of B·A"));

    let (o, _) = grade(&checkpoint(&lab, 4, |t| {
        let b = (&t["fc.bias"] + 0.1).unwrap();
        t.insert("fc.bias".into(), b);
    }));
    assert!(reason(o).contains("fc.bias"));

    let (o, _) = grade(&checkpoint(&lab, 4, |t| {
        t.insert(
            "head.bias".into(),
            Tensor::new(&[f32::NAN; 5], &Device::Cpu).unwrap(),
        );
    }));
    assert!(reason(o).contains("NaN"));

    let (o, _) = grade(&checkpoint(&lab, 4, |t| {
        t.remove("fc.lora_a");
    }));
    assert!(reason(o).contains("fc.lora_a"));

    let (o, _) = grade(&checkpoint(&lab, 4, |t| {
        t.insert(
            "conv1.weight".into(),
            Tensor::zeros((16, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
    }));
    assert!(reason(o).contains("conv1.weight"));

    // The program finishes without a checkpoint, or runs out of time.
    let tmp = tempfile::tempdir().unwrap();
    let data = finetune::prepare_data(&lab, &tmp.path().join("data")).unwrap();
    assert_eq!(data.examples["train"], 250);
    let mut quick = spec.clone();
    quick.timeout_seconds = 2;
    let nothing = script(tmp.path(), "nothing", "exit 0");
    let r = finetune::run_fine_tune(
        &lab,
        &quick,
        &nothing,
        &data,
        &tmp.path().join("o1"),
        1.0,
        &mut |_| {},
    )
    .unwrap();
    assert!(reason(r.outcome).contains("without writing model.safetensors"));
    let hang = script(tmp.path(), "hang", "exec sleep 30");
    let r = finetune::run_fine_tune(
        &lab,
        &quick,
        &hang,
        &data,
        &tmp.path().join("o2"),
        1.0,
        &mut |_| {},
    )
    .unwrap();
    assert!(reason(r.outcome).contains("time limit"));
}

#[test]
fn quick_lab_check_passes_and_grades_are_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = CodeCheckOptions {
        step_scale: 0.25,
        work_dir: Some(tmp.path().join("check")),
        binaries: Some(Binaries {
            starter: starter_bin(),
            solution: solution_bin(),
        }),
    };
    let mut events = 0;
    let report = check_code_lab(&lab_dir(), &opts, &mut |p| {
        if let sanhak_runner::codelab::check::CodeCheckProgress::Event(Event::Step { .. }) = p {
            events += 1;
        }
    })
    .unwrap();
    assert!(report.passed(), "{:#?}", report.failures);
    assert!(events > 0, "the training steps were streamed");
    let starter = report.starter.outcome.grade().unwrap();
    let solution = report.solution.outcome.grade().unwrap();
    assert!(starter.points < 50.0, "{}", starter.points);
    assert_eq!(solution.numerics.points, 60.0);
    assert_eq!(solution.fine_tune.rank, Some(8));
    let sol_metric = match &solution.fine_tune.outcome {
        GradeOutcome::Graded(r) => r.metric,
        other => panic!("{other:?}"),
    };
    let before = match &report.before {
        GradeOutcome::Graded(r) => r.metric,
        other => panic!("{other:?}"),
    };
    assert!(
        sol_metric > before + 0.3,
        "fine-tuning {sol_metric} vs base {before}"
    );
    eprintln!(
        "quick code-lab check: starter {:.1}, solution {:.1} points (accuracy {sol_metric:.4}, base {before:.4}); {:.1} s",
        starter.points, solution.points, report.wall_s
    );

    // Same binary, same seed: the same grade, to the last digit.
    let lab = lab();
    let data = finetune::prepare_data(&lab, &tmp.path().join("data2")).unwrap();
    let again = grade_submission(
        &lab,
        &solution_bin(),
        &data,
        &GradeOptions {
            step_scale: 0.25,
            work_dir: tmp.path().join("again"),
        },
        &mut |_| {},
    );
    let again = again.grade().unwrap();
    assert_eq!(again.points, solution.points);
    match &again.fine_tune.outcome {
        GradeOutcome::Graded(r) => assert_eq!(r.metric, sol_metric),
        other => panic!("{other:?}"),
    }
}
