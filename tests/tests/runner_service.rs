//! The runner service end to end: runner tokens, submissions through the API,
//! the runner protocol, and a real `sanhak worker` training in bubblewrap and
//! grading, including the faults (a worker killed mid-training, the app
//! restarted while a job runs, a duplicate report).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sanhak::db::courses::{self, NewCourse};
use sanhak::db::{runners, tokens};
use sanhak::domain::{CourseCode, CourseRole, OrgKind, UserKind};
use sanhak_runner::protocol;
use sanhak_tests::{both_backends, labs_dir, sanhak_bin, Api, Backend, TestApp, TestDb};
use serde_json::{json, Value};

const LAB: &str = "fashion-transfer";

struct Class {
    course_id: String,
    student: Api,
    other_student: Api,
    outsider: Api,
    instructor: Api,
    runner_token: String,
}

async fn token_for(app: &TestApp, email: &str, kind: UserKind) -> (String, String) {
    let u = app.create_user(email, kind).await;
    let t = tokens::create(&app.db, &u.id, "test").await.expect("token");
    (u.id, t)
}

/// A course offering `fashion-transfer`, two students, an outsider and a runner token.
async fn class(app: &TestApp) -> Class {
    let uni = app.create_org("svc-uni", OrgKind::University).await;
    let (prof, prof_token) = token_for(app, "prof@svc.test", UserKind::Instructor).await;
    let code = CourseCode::parse("ML1").expect("code");
    let course_id = courses::create(
        &app.db,
        NewCourse {
            code: &code,
            title: "ML",
            term: "2027-spring",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof,
        },
    )
    .await
    .expect("course");
    let mut students = Vec::new();
    for email in ["a@svc.test", "b@svc.test"] {
        let (id, t) = token_for(app, email, UserKind::Student).await;
        courses::enroll(&app.db, &course_id, &id, CourseRole::Student)
            .await
            .expect("enroll");
        students.push(t);
    }
    let (_, outsider) = token_for(app, "c@svc.test", UserKind::Student).await;
    let instructor = Api::new(app, Some(prof_token));
    let r = instructor
        .request(
            Method::PUT,
            &format!("/api/v1/courses/{course_id}/labs/{LAB}"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let (_, runner_token) = runners::create(&app.db, "test-runner", None)
        .await
        .expect("runner");
    let other = students.pop().expect("b");
    Class {
        course_id,
        student: Api::new(app, students.pop()),
        other_student: Api::new(app, Some(other)),
        outsider: Api::new(app, Some(outsider)),
        instructor,
        runner_token,
    }
}

fn recipe(name: &str) -> String {
    std::fs::read_to_string(labs_dir().join(LAB).join(name)).expect("recipe")
}

async fn submit(api: &Api, course_id: &str, body: Value) -> reqwest::Response {
    api.request(
        Method::POST,
        &format!("/api/v1/courses/{course_id}/labs/{LAB}/submissions"),
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

async fn job(api: &Api, id: &str) -> Value {
    let r = api
        .request(Method::GET, &format!("/api/v1/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Polls the job until `done(job)` holds, failing after `limit`.
async fn wait_for(api: &Api, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let j = job(api, id).await;
        if done(&j) {
            return j;
        }
        assert!(
            start.elapsed() < limit,
            "job never reached the expected state: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submission_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

fn runner_api(app: &TestApp, token: Option<&str>) -> Api {
    Api::new(app, token.map(str::to_owned))
}

fn registration() -> protocol::Register {
    protocol::Register {
        name: "t".into(),
        version: "0".into(),
        gpus: vec![],
        cpu_slots: 2,
        labels: vec!["cpu-only".into()],
    }
}

both_backends!(
    runner_tokens_are_required_and_revocable,
    |app: TestApp| async move {
        let c = class(&app).await;
        let path = format!("{}/register", protocol::API_PREFIX);
        let status = |api: Api| {
            let path = path.clone();
            async move {
                api.request(Method::POST, &path)
                    .json(&registration())
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(
            status(runner_api(&app, None)).await,
            StatusCode::UNAUTHORIZED
        );
        // A person's API token is not a runner token.
        assert_eq!(
            status(Api::new(&app, c.student.token.clone())).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(runner_api(&app, Some("shr_forged"))).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(runner_api(&app, Some(&c.runner_token))).await,
            StatusCode::OK
        );
        // Lab packages are for runners only.
        let pkg = format!("{}/labs/{LAB}", protocol::API_PREFIX);
        let r = c.student.request(Method::GET, &pkg).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(runners::revoke(&app.db, "test-runner").await.unwrap(), 1);
        assert_eq!(
            status(runner_api(&app, Some(&c.runner_token))).await,
            StatusCode::UNAUTHORIZED
        );
    }
);

both_backends!(
    bad_submissions_are_refused_whole,
    |app: TestApp| async move {
        let c = class(&app).await;
        let cid = c.course_id.clone();
        // A recipe outside the schema: every problem named, nothing stored.
        let r = submit(
            &c.student,
            &cid,
            json!({"recipe": "learning_rate = -3\nbogus = 1\n"}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = r.json().await.unwrap();
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.contains("learning_rate") && msg.contains("bogus"),
            "{msg}"
        );
        let r = submit(&c.student, &cid, json!({"recipe": "this is [not toml"})).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = submit(&c.student, &cid, json!({"code": "fn main() {}"})).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = submit(&c.student, &cid, json!({"recipe": "", "code": ""})).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = submit(&c.student, &cid, json!({"recipe": "x".repeat(70_000)})).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        // Not in the course; a lab the course does not offer.
        let r = submit(
            &c.outsider,
            &cid,
            json!({"recipe": recipe("starter/recipe.toml")}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = c
            .student
            .request(
                Method::POST,
                &format!("/api/v1/courses/{cid}/labs/korean-lm-adapt/submissions"),
            )
            .json(&json!({"recipe": ""}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(submission_count(&app).await, 0, "nothing half-stored");

        // A good one is queued; only its student and the staff see it.
        let r = submit(
            &c.student,
            &cid,
            json!({"recipe": recipe("starter/recipe.toml")}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let s: Value = r.json().await.unwrap();
        let id = s["job_id"].as_str().unwrap().to_owned();
        assert_eq!(s["queue_position"], 0);
        let mine = job(&c.student, &id).await;
        assert_eq!(mine["state"], "queued");
        assert_eq!(mine["lab_version"], "1.0.0");
        let r = c
            .other_student
            .request(Method::GET, &format!("/api/v1/jobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "another student may not see it"
        );
        let r = c
            .other_student
            .request(Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(job(&c.instructor, &id).await["state"], "queued");
        // The instructor cancels it.
        let r = c
            .instructor
            .request(Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let j = job(&c.student, &id).await;
        assert_eq!(j["state"], "cancelled");
        assert!(j["message"].as_str().unwrap().contains("staff"));
    }
);

both_backends!(
    the_protocol_grades_once_and_ignores_duplicates,
    |app: TestApp| async move {
        let c = class(&app).await;
        let r = submit(
            &c.student,
            &c.course_id,
            json!({"recipe": recipe("starter/recipe.toml")}),
        )
        .await;
        let id = r.json::<Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let runner = runner_api(&app, Some(&c.runner_token));
        let p = protocol::API_PREFIX;
        runner
            .request(Method::POST, &format!("{p}/register"))
            .json(&registration())
            .send()
            .await
            .unwrap();
        // Nothing fits zero free CPU slots: the long-poll answers 204.
        let none = runner
            .request(Method::POST, &format!("{p}/claim"))
            .json(&protocol::Claim {
                free_cpu_slots: 0,
                free_gpu_memory_mb: vec![],
                wait_ms: 200,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), StatusCode::NO_CONTENT);
        let spec: protocol::JobSpec = runner
            .request(Method::POST, &format!("{p}/claim"))
            .json(&protocol::Claim {
                free_cpu_slots: 2,
                free_gpu_memory_mb: vec![],
                wait_ms: 1000,
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(spec.job_id, id);
        assert_eq!(spec.kind, protocol::SubmissionKind::Recipe);
        assert_eq!(spec.content, recipe("starter/recipe.toml"));
        // The package listing matches the job's package hash and marks hidden files trusted.
        let pkg: protocol::LabPackage = runner
            .request(Method::GET, &format!("{p}/labs/{LAB}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(pkg.hash, spec.lab.package_hash);
        assert!(pkg
            .files
            .iter()
            .any(|f| f.path.starts_with("hidden/") && f.trusted));
        assert!(pkg.files.iter().all(
            |f| f.trusted == (f.path.starts_with("hidden/") || f.path.starts_with("solution/"))
        ));
        let lab_toml = pkg.files.iter().find(|f| f.path == "lab.toml").unwrap();
        let bytes = runner
            .request(
                Method::GET,
                &format!("{p}/labs/{LAB}/files/{}", lab_toml.sha256),
            )
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(protocol::sha256_hex(&bytes), lab_toml.sha256);

        let events = protocol::EventBatch {
            lease: spec.lease.clone(),
            events: vec![protocol::JobEvent {
                seq: 0,
                at_ms: 1,
                kind: "event".into(),
                data: json!({"event": "step", "step": 1, "loss": 2.0}),
            }],
        };
        let r = runner
            .request(Method::POST, &format!("{p}/jobs/{id}/events"))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let complete = protocol::Complete {
            lease: spec.lease.clone(),
            outcome: protocol::Outcome::Graded,
            points: Some(42.0),
            max_points: 100.0,
            metric: Some(0.8),
            public_metric: Some(0.81),
            message: "graded".into(),
            report: json!({"ok": true}),
            artifacts: vec![],
            usage: protocol::Usage {
                wall_seconds: 1.0,
                cpu_seconds: 1.0,
                gpu_seconds: 0.0,
            },
        };
        let first: protocol::ReportReply = runner
            .request(Method::POST, &format!("{p}/jobs/{id}/complete"))
            .json(&complete)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(first.accepted);
        let mut again = complete.clone();
        again.points = Some(100.0);
        let second: protocol::ReportReply = runner
            .request(Method::POST, &format!("{p}/jobs/{id}/complete"))
            .json(&again)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!second.accepted, "the duplicate report is ignored");
        let j = job(&c.student, &id).await;
        assert_eq!(j["state"], "done");
        assert_eq!(j["points"], 42.0);
        assert_eq!(j["public_metric"], 0.81);
        assert!(
            j["metric"].is_null(),
            "students never see the private metric"
        );
        assert_eq!(job(&c.instructor, &id).await["metric"], 0.8);
        // The queue shows on /metrics.
        let metrics = reqwest::get(app.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("sanhak_jobs{state=\"done\"} 1"),
            "{metrics}"
        );
        // Events after the result are refused.
        let r = runner
            .request(Method::POST, &format!("{p}/jobs/{id}/events"))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let ev: Vec<Value> = c
            .student
            .request(Method::GET, &format!("/api/v1/jobs/{id}/events"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["data"]["step"], 1);
    }
);

/// Reads a Server-Sent Events response until `done(text so far)` holds.
async fn read_sse_until(r: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    use futures::StreamExt as _;
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&text) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => break,
            Err(_) => panic!("the stream never showed what was expected:\n{text}"),
        }
    }
    text
}

both_backends!(live_events_stream_and_resume, |app: TestApp| async move {
    let c = class(&app).await;
    let r = submit(
        &c.student,
        &c.course_id,
        json!({"recipe": recipe("starter/recipe.toml")}),
    )
    .await;
    let id = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runner = runner_api(&app, Some(&c.runner_token));
    let p = protocol::API_PREFIX;
    let spec: protocol::JobSpec = runner
        .request(Method::POST, &format!("{p}/claim"))
        .json(&protocol::Claim {
            free_cpu_slots: 2,
            free_gpu_memory_mb: vec![],
            wait_ms: 1000,
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let post_event = |seq: u64| {
        let body = protocol::EventBatch {
            lease: spec.lease.clone(),
            events: vec![protocol::JobEvent {
                seq,
                at_ms: 1,
                kind: "event".into(),
                data: json!({"event": "step", "step": seq, "loss": 1.5}),
            }],
        };
        runner
            .request(Method::POST, &format!("{p}/jobs/{id}/events"))
            .json(&body)
            .send()
    };
    assert_eq!(
        post_event(0).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );

    // The student's browser (session cookie) watches the job.
    let browser = app.browser();
    assert_eq!(
        browser
            .login("a@svc.test", sanhak_tests::PASSWORD)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let url = app.url(&format!("/jobs/{id}/stream"));
    let r = browser.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = tokio::spawn(read_sse_until(r, |t| t.contains("id: 1")));
    // A live event arrives on the open stream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        post_event(1).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let text = first.await.unwrap();
    assert!(
        text.contains("event: event") && text.contains("id: 0"),
        "{text}"
    );
    assert!(text.contains("\"step\":1"), "{text}");

    // Reconnecting with Last-Event-ID resumes after it.
    let r = browser
        .client
        .get(&url)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let resumed = tokio::spawn(read_sse_until(r, |t| t.contains("event: end")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        post_event(2).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let complete = protocol::Complete {
        lease: spec.lease.clone(),
        outcome: protocol::Outcome::Graded,
        points: Some(1.0),
        max_points: 100.0,
        metric: None,
        public_metric: None,
        message: "graded".into(),
        report: json!({}),
        artifacts: vec![],
        usage: protocol::Usage::default(),
    };
    runner
        .request(Method::POST, &format!("{p}/jobs/{id}/complete"))
        .json(&complete)
        .send()
        .await
        .unwrap();
    let text = resumed.await.unwrap();
    assert!(
        !text.contains("id: 0\n"),
        "event 0 sent again after Last-Event-ID 0:\n{text}"
    );
    assert!(text.contains("id: 1") && text.contains("id: 2"), "{text}");
    assert!(text.contains("event: end\ndata: done"), "{text}");

    // Another student may not watch it.
    let other = app.browser();
    assert_eq!(
        other
            .login("b@svc.test", sanhak_tests::PASSWORD)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        other.client.get(&url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
});

/// An app whose jobs train at a small fraction of the lab's steps.
async fn quick_app(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| {
        s.job_step_scale = Some(0.1);
        s.lease_seconds = Some(3);
    })
    .await
}

fn event_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "event")
        .filter_map(|e| e["data"]["event"].as_str().map(str::to_owned))
        .collect()
}

async fn all_events(api: &Api, id: &str) -> Vec<Value> {
    api.request(Method::GET, &format!("/api/v1/jobs/{id}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A runner in the test's process, over loopback, starting `trainer` in its sandboxes.
async fn in_process_worker(
    app: &TestApp,
    trainer: std::path::PathBuf,
) -> tokio::task::JoinHandle<()> {
    sanhak::worker::spawn_in_process(
        &app.state,
        app.addr,
        sanhak::worker::InProcess {
            trainer: Some(trainer),
            rlib_cache: None,
        },
    )
    .await
    .expect("worker")
}

/// Submits the lab's solution recipe as the class's student and waits until
/// the job ends; returns its id and its final state.
async fn solution_job(c: &Class, limit: Duration) -> (String, Value) {
    let r = submit(
        &c.student,
        &c.course_id,
        json!({"recipe": recipe("solution/recipe.toml")}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = wait_for(&c.student, &id, limit, |j| {
        sanhak::db::jobs::is_final(j["state"].as_str().unwrap_or(""))
    })
    .await;
    (id, j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_is_trained_in_bwrap_graded_and_recorded() {
    if sanhak_sandbox::bwrap_path().is_none() {
        panic!("bubblewrap is required: install the Debian package `bubblewrap`");
    }
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = quick_app(backend).await;
        let c = class(&app).await;
        let worker = in_process_worker(&app, sanhak_bin()).await;
        let (id, j) = solution_job(&c, Duration::from_secs(240)).await;
        assert_eq!(j["state"], "done", "{j:#}");
        assert_eq!(j["outcome"], "graded");
        assert!(j["points"].as_f64().unwrap() > 0.0, "{j:#}");
        assert!(j["public_metric"].as_f64().unwrap() > 0.5, "{j:#}");
        assert!(j["started_ms"].as_i64().unwrap() >= j["enqueued_ms"].as_i64().unwrap());
        assert!(j["cpu_seconds"].as_f64().unwrap() > 0.0);
        let events = all_events(&c.student, &id).await;
        let names = event_names(&events);
        for expected in ["started", "step", "eval", "checkpoint", "finished"] {
            assert!(
                names.iter().any(|n| n == expected),
                "no {expected} event in {names:?}"
            );
        }
        assert_eq!(j["events_stored"].as_i64().unwrap() as usize, events.len());
        // The hidden split never reached the sandbox: the runner's public copy has no hidden/.
        let cache = app.test_db.dir().join("lab-cache/labs");
        let public_hidden = std::fs::read_dir(&cache)
            .unwrap()
            .filter_map(Result::ok)
            .any(|d| d.path().join("public").join(LAB).join("hidden").exists());
        assert!(!public_hidden, "hidden/ in the sandbox's copy");
        worker.abort();
    }
}

/// A trainer that cannot open the device it was given (here a script that
/// exits as `sanhak lab train` does then) is the runner's fault: the job goes
/// back on the queue each time and, after its last attempt, is not gradable
/// with the reason; the student is never blamed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_without_its_device_is_an_infrastructure_fault() {
    if sanhak_sandbox::bwrap_path().is_none() {
        panic!("bubblewrap is required: install the Debian package `bubblewrap`");
    }
    let app = quick_app(Backend::Sqlite).await;
    let c = class(&app).await;
    let trainer = app.test_db.dir().join("no-device-trainer");
    std::fs::write(
        &trainer,
        format!(
            "#!/bin/sh\necho 'error: cannot open training device cuda:0: no CUDA-capable device' >&2\nexit {}\n",
            sanhak_runner::train::device::DEVICE_UNAVAILABLE_EXIT
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&trainer, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let worker = in_process_worker(&app, trainer).await;
    let (_, j) = solution_job(&c, Duration::from_secs(120)).await;
    assert_eq!(j["state"], "not_gradable", "{j:#}");
    assert_eq!(j["fault"], "infrastructure", "{j:#}");
    assert_eq!(j["attempts"], 3, "{j:#}");
    let message = j["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("training device is unavailable")
            && message.contains("no CUDA-capable device"),
        "{j:#}"
    );
    worker.abort();
}

/// A `sanhak` child process with the test's database.
fn sanhak_process(args: &[&str], db_url: &str, data_dir: &std::path::Path) -> Child {
    Command::new(sanhak_bin())
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("SANHAK_DATA_DIR", data_dir)
        .env("SANHAK_LABS_DIR", labs_dir())
        .env("SANHAK_LOG", "warn")
        .env("SANHAK_LEASE_SECONDS", "2")
        .env("SANHAK_JOB_STEP_SCALE", "0.1")
        .stdout(Stdio::null())
        .stderr(log_file(data_dir, args[0]))
        .spawn()
        .expect("start sanhak")
}

/// Where a child's stderr goes (shown when a fault story fails).
fn log_file(dir: &std::path::Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn log_tail(dir: &std::path::Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stopping the server (SIGTERM) answers a runner's waiting claim with "no
/// job" at once, so `sanhak serve` exits instead of holding its shutdown for
/// the rest of the long poll (25 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_ends_waiting_claims_at_once() {
    let test_db = TestDb::new(Backend::Sqlite).await;
    let data = tempfile::tempdir().unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let app = TestApp::attach(Backend::Sqlite, test_db).await;
    let c = class(&app).await;
    let mut server = Killed(sanhak_process(
        &["serve", "--bind", &bind],
        &app.test_db.url,
        data.path(),
    ));
    let url = format!("http://{bind}{}", protocol::API_PREFIX);
    let client = reqwest::Client::new();
    let mut registered = None;
    for _ in 0..100 {
        if let Ok(r) = client
            .post(format!("{url}/register"))
            .bearer_auth(&c.runner_token)
            .json(&registration())
            .send()
            .await
        {
            registered = Some(r.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        registered,
        Some(StatusCode::OK),
        "{}",
        log_tail(data.path(), "serve")
    );
    let claim = tokio::spawn({
        let (client, url, token) = (client.clone(), url.clone(), c.runner_token.clone());
        async move {
            let started = Instant::now();
            let r = client
                .post(format!("{url}/claim"))
                .bearer_auth(token)
                .json(&protocol::Claim {
                    free_cpu_slots: 2,
                    free_gpu_memory_mb: vec![],
                    wait_ms: 60_000,
                })
                .send()
                .await
                .expect("the claim is answered before the server exits");
            (r.status(), started.elapsed())
        }
    });
    // Let the claim start waiting (the queue is empty), then stop the server.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let (status, waited) = claim.await.unwrap();
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "a stopping server has no job to hand out"
    );
    let exit = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "sanhak serve still running {:?} after SIGTERM:\n{}",
            stopped.elapsed(),
            log_tail(data.path(), "serve")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit}");
    assert!(
        waited < Duration::from_secs(15),
        "the claim waited {waited:?}, as if the server were not stopping"
    );
}

/// The faults, with real processes: `sanhak serve` and `sanhak worker`.
async fn fault_story(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let serve = |db_url: &str| {
        Killed(sanhak_process(
            &["serve", "--bind", &bind],
            db_url,
            data.path(),
        ))
    };
    // The test talks to the same database through its own app on port 0,
    // which also applies the migrations before `sanhak serve` starts.
    let app = TestApp::attach(backend, test_db).await;
    let mut server = serve(&app.test_db.url);
    let c = class(&app).await;
    let server_url = format!("http://{bind}");
    // The student uses the test's app, which stays up while `sanhak serve` restarts.
    let student = &c.student;
    let mut up = false;
    for _ in 0..100 {
        if reqwest::get(format!("{server_url}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "sanhak serve did not start:\n{}",
        log_tail(data.path(), "serve")
    );
    let worker_dir = tempfile::tempdir().unwrap();
    let start_worker = || {
        Killed(sanhak_process(
            &[
                "worker",
                "--server",
                &server_url,
                "--token",
                &c.runner_token,
                "--cpu-slots",
                "2",
            ],
            &app.test_db.url,
            worker_dir.path(),
        ))
    };

    // 1. A worker killed mid-training: the job is requeued after its lease
    //    expires and graded exactly once by the next worker.
    let mut w1 = start_worker();
    let r = submit(
        student,
        &c.course_id,
        json!({"recipe": recipe("solution/recipe.toml")}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(student, &id, Duration::from_secs(120), |j| {
        j["state"] == "running" && j["events_stored"].as_i64().unwrap_or(0) > 3
    })
    .await;
    w1.0.kill().unwrap();
    w1.0.wait().unwrap();
    let requeued = wait_for(student, &id, Duration::from_secs(30), |j| {
        j["state"] == "queued"
    })
    .await;
    assert_eq!(requeued["attempts"], 1);
    assert!(requeued["message"].as_str().unwrap().contains("requeued"));
    let _w2 = start_worker();
    let j = wait_for(student, &id, Duration::from_secs(240), |j| {
        sanhak::db::jobs::is_final(j["state"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(
        j["state"],
        "done",
        "{j:#}\nworker log:\n{}",
        log_tail(worker_dir.path(), "worker")
    );
    assert_eq!(j["attempts"], 2);
    assert!(j["points"].as_f64().unwrap() > 0.0);
    let events = all_events(student, &id).await;
    let starts = event_names(&events)
        .iter()
        .filter(|n| *n == "started")
        .count();
    assert_eq!(starts, 1, "the events are the second attempt's only");

    // 2. The app restarted while a job runs: nothing is lost, the worker reconnects.
    let r = submit(
        student,
        &c.course_id,
        json!({"recipe": recipe("solution/recipe.toml")}),
    )
    .await;
    let id2 = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(student, &id2, Duration::from_secs(120), |j| {
        j["state"] == "running"
    })
    .await;
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server = serve(&app.test_db.url);
    let j = wait_for(student, &id2, Duration::from_secs(240), |j| {
        sanhak::db::jobs::is_final(j["state"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(j["state"], "done", "{j:#}");
    assert!(j["points"].as_f64().unwrap() > 0.0);
    // And the restarted app hands out new work to the same worker.
    let r = submit(
        student,
        &c.course_id,
        json!({"recipe": recipe("starter/recipe.toml")}),
    )
    .await;
    let id3 = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = wait_for(student, &id3, Duration::from_secs(240), |j| {
        sanhak::db::jobs::is_final(j["state"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(j["state"], "done", "{j:#}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sqlite() {
    fault_story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_postgres() {
    fault_story(Backend::Postgres).await;
}
