//! Code-lab submissions end to end through the runner service: submitted
//! through the API, compiled in a sandbox with no network, run in the
//! training sandbox, graded outside it. Hostile submissions (planted links,
//! no or broken checkpoints, faked metrics, escape attempts) each end with a
//! clear result, and the runner goes on to the next job unharmed.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sanhak::db::courses::{self, NewCourse};
use sanhak::db::tokens;
use sanhak::domain::{CourseCode, CourseRole, OrgKind, UserKind};
use sanhak_tests::{labs_dir, sanhak_bin, Api, Backend, TestApp};
use serde_json::{json, Value};

const LAB: &str = "lora-from-scratch";

fn source(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lab's starter with the hostile act `tests/hostile_jobs/<name>.rs`
/// inserted at the top of `LoraLayer::new`, right after its rank check.
fn hostile(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile_jobs");
    let act = source(&dir.join(format!("{name}.rs")));
    let starter = lab_source("starter");
    let marker = "            bail!(\"LoRA rank must be at least 1\");\n        }\n";
    let at = starter.find(marker).expect("the starter's rank check") + marker.len();
    let mut code = format!("{}{act}{}", &starter[..at], &starter[at..]);
    if act.contains("train_out()") {
        code.push_str(&source(&dir.join("train_out.rs")));
    }
    code
}

fn lab_source(which: &str) -> String {
    source(&labs_dir().join(LAB).join(which).join("src/lib.rs"))
}

async fn wait_final(api: &Api, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let r = api
            .request(Method::GET, &format!("/api/v1/jobs/{id}"))
            .send()
            .await
            .unwrap();
        let j: Value = r.json().await.unwrap();
        if sanhak::db::jobs::is_final(j["state"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "job never finished: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_submissions_and_hostile_ones_end_clearly() {
    assert!(
        sanhak_sandbox::bwrap_path().is_some(),
        "bubblewrap is required: install the Debian package `bubblewrap`"
    );
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.job_step_scale = Some(0.1);
        s.max_running_per_student = Some(8);
    })
    .await;
    let uni = app.create_org("hostile-uni", OrgKind::University).await;
    let prof = app
        .create_user("prof@hostile.test", UserKind::Instructor)
        .await;
    let student = app.create_user("s@hostile.test", UserKind::Student).await;
    let code = CourseCode::parse("SEC1").unwrap();
    let course = courses::create(
        &app.db,
        NewCourse {
            code: &code,
            title: "Sec",
            term: "t",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await
    .unwrap();
    courses::enroll(&app.db, &course, &student.id, CourseRole::Student)
        .await
        .unwrap();
    sanhak::db::labs::add(&app.db, &course, LAB, None)
        .await
        .unwrap();
    let token = tokens::create(&app.db, &student.id, "t").await.unwrap();
    let api = Api::new(&app, Some(token));
    let worker = sanhak::worker::spawn_in_process(
        &app.state,
        app.addr,
        sanhak::worker::InProcess {
            trainer: Some(sanhak_bin()),
            // Shared with the runner crate's code-lab tests: one prebuild per target folder.
            rlib_cache: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("codelab-prebuilt")),
        },
    )
    .await
    .unwrap();

    let cases: Vec<(&str, String)> = vec![
        ("starter", lab_source("starter")),
        ("solution", lab_source("solution")),
        ("syntax_error", "pub fn broken( {\n".to_owned()),
        ("symlink_checkpoint", hostile("symlink_checkpoint")),
        ("hardlink_checkpoint", hostile("hardlink_checkpoint")),
        ("no_checkpoint", hostile("no_checkpoint")),
        ("garbage_checkpoint", hostile("garbage_checkpoint")),
        ("fake_metrics", hostile("fake_metrics")),
        ("escape_attempts", hostile("escape_attempts")),
    ];
    let mut ids = Vec::new();
    for (name, code) in &cases {
        let r = api
            .request(
                Method::POST,
                &format!("/api/v1/courses/{course}/labs/{LAB}/submissions"),
            )
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{name}");
        let id = r.json::<Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned();
        ids.push((*name, id));
    }
    let mut results = std::collections::HashMap::new();
    for (name, id) in &ids {
        results.insert(*name, wait_final(&api, id).await);
    }
    let points = |name: &str| results[name]["points"].as_f64();
    let message = |name: &str| results[name]["message"].as_str().unwrap_or("").to_owned();
    for (name, j) in &results {
        eprintln!(
            "{name}: {} {:?} {}",
            j["state"],
            j["points"].as_f64(),
            j["message"]
                .as_str()
                .unwrap_or("")
                .lines()
                .last()
                .unwrap_or("")
        );
    }

    // The reference solution beats the starter; both are graded.
    let starter = points("starter").expect("the starter is graded");
    let solution = points("solution").expect("the solution is graded");
    assert!(
        solution > starter,
        "solution {solution} vs starter {starter}"
    );

    // A compile error fails the job with the line, and no host path.
    let broken = &results["syntax_error"];
    assert_eq!(broken["state"], "failed", "{broken:#}");
    let m = message("syntax_error");
    assert!(m.contains("src/lib.rs:1"), "{m}");
    for host in [
        "/work/main",
        "/root",
        ".rustup",
        env!("CARGO_TARGET_TMPDIR"),
    ] {
        assert!(!m.contains(host), "host path {host} in {m}");
    }

    // Planted links, no checkpoint, a broken checkpoint: graded with zero
    // fine-tuning points and the reason, never read through the link.
    for name in [
        "symlink_checkpoint",
        "hardlink_checkpoint",
        "no_checkpoint",
        "garbage_checkpoint",
    ] {
        let j = &results[name];
        assert_eq!(j["state"], "done", "{name}: {j:#}");
        let m = message(name);
        let line = m
            .lines()
            .find(|l| l.starts_with("fine-tuning"))
            .unwrap_or_else(|| panic!("{name}: no fine-tuning line in {m}"));
        assert!(line.contains(": 0/"), "{name}: {line}");
        assert!(!m.contains("root:x:0:0"), "{name} read /etc/passwd");
    }
    // Faked metrics on stdout and failed escape attempts change nothing: the
    // grade is the starter's, to the point.
    assert_eq!(points("fake_metrics"), Some(starter));
    assert_eq!(
        points("escape_attempts"),
        Some(starter),
        "{}",
        message("escape_attempts")
    );
    worker.abort();
}
