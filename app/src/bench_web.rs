//! `sanhak bench web`: the web app under load, against a real `sanhak serve`
//! child process on SQLite, with simulated students logged in over HTTP.
//!
//! - **Pages:** requests/s, p50 and p99 of the lab page and the dashboard,
//!   each next to `/healthz` (the cheapest route) measured in the same run.
//! - **Live progress:** many open Server-Sent Event streams while jobs run.
//!   A simulated runner claims jobs over the runner protocol and posts an
//!   event to each every `--event-ms`; each event carries the time it was
//!   sent, so every stream measures the delay from runner to browser.
//! - **Memory:** the server's resident set size after the page phases and
//!   with every stream open.
//!
//! The load generator runs in this process and shares the machine's cores
//! with the server, as `wrk` would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt as _;
use sanhak_runner::protocol::{self, SubmissionKind};
use tokio::sync::Mutex;

use crate::db::jobs::{self, AttemptLimits, NewSubmission, QueuePolicy};
use crate::db::labs::LabSettings;
use crate::db::{courses, runners, users, Db};
use crate::domain::{CourseCode, CourseRole, DisplayName, Email, OrgKind, Slug, UserKind};

#[derive(Debug, Clone, Args)]
pub struct WebBenchArgs {
    /// Simulated students (each logs in and keeps its own session).
    #[arg(long, default_value_t = 200)]
    pub students: usize,
    /// Concurrent requests in the page phases.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds each page phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Open SSE streams in the live-progress phase.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Running jobs the streams follow (the streams are spread over them).
    #[arg(long, default_value_t = 50)]
    pub jobs: usize,
    /// Milliseconds between events of each running job.
    #[arg(long, default_value_t = 500)]
    pub event_ms: u64,
}

const LAB: &str = "fashion-transfer";
const PASSWORD: &str = "bench-password-123";

fn now_ms() -> i64 {
    jobs::now_ms()
}

/// p50 and p99 of samples in milliseconds.
fn p50_p99(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        samples[(((samples.len() - 1) as f64) * q).round() as usize]
    };
    (at(0.5), at(0.99))
}

/// The server child process, killed on drop.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Resident and peak resident memory in MB, from /proc.
    fn memory_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

struct Seeded {
    course_id: String,
    students: Vec<String>,
    runner_token: String,
}

async fn seed(db: &Db, n: usize, jobs_n: usize, labs_dir: &Path) -> anyhow::Result<Seeded> {
    db.migrate().await?;
    let uni = crate::db::orgs::create(
        db,
        &Slug::parse("bench-univ").map_err(anyhow::Error::msg)?,
        "Bench University",
        OrgKind::University,
        "",
    )
    .await?;
    let hash = crate::secrets::hash_password(PASSWORD)?;
    let prof = users::create(
        db,
        &Email::parse("prof@bench.ac.kr").map_err(anyhow::Error::msg)?,
        &DisplayName::parse("Bench Prof").map_err(anyhow::Error::msg)?,
        &hash,
        UserKind::Instructor,
    )
    .await?;
    let course_id = courses::create(
        db,
        courses::NewCourse {
            code: &CourseCode::parse("BENCH1").map_err(anyhow::Error::msg)?,
            title: "Bench",
            term: "2027-spring",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the bench course: {e:?}"))?;
    crate::db::labs::put(
        db,
        &course_id,
        LAB,
        &LabSettings {
            due_at: Some(crate::db::now() + 7 * 86_400),
            ..LabSettings::default()
        },
    )
    .await?;
    let mut students = Vec::with_capacity(n);
    for i in 0..n {
        let email = format!("student{i}@bench.ac.kr");
        let u = users::create(
            db,
            &Email::parse(&email).map_err(anyhow::Error::msg)?,
            &DisplayName::parse(&format!("Student {i}")).map_err(anyhow::Error::msg)?,
            &hash,
            UserKind::Student,
        )
        .await?;
        courses::enroll(db, &course_id, &u.id, CourseRole::Student).await?;
        students.push(email);
    }
    // Each of the first `jobs_n` students has a queued job for the runner to claim.
    let lab = sanhak_runner::lab::Lab::load(&labs_dir.join(LAB))?;
    let recipe = std::fs::read_to_string(lab.dir().join("starter/recipe.toml"))?;
    let policy = QueuePolicy::default();
    for email in students.iter().take(jobs_n) {
        let user = users::by_email(db, email)
            .await?
            .context("bench student vanished")?;
        let new = NewSubmission {
            course_id: &course_id,
            lab_id: LAB,
            lab_version: &lab.manifest.version,
            lab_hash: "bench",
            user_id: &user.id,
            kind: SubmissionKind::Recipe,
            content: &recipe,
            resources: protocol::Resources {
                cpu_slots: 1,
                gpu_count: 0,
                gpu_memory_mb: 0,
                wall_seconds: 3600,
                memory_mb: 512,
            },
            step_scale: 1.0,
            due_at_ms: None,
            late_seconds: 0,
            penalty_pct: 0.0,
            limits: AttemptLimits::default(),
            regrade: None,
        };
        if let Err(r) = jobs::submit(db, &new, &policy).await? {
            anyhow::bail!("a bench submission was refused: {r:?}");
        }
    }
    let (_, runner_token) = runners::create(db, "bench-runner", None).await?;
    Ok(Seeded {
        course_id,
        students,
        runner_token,
    })
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1024)
        .build()?)
}

/// A logged-in student's client.
async fn login(base: &str, email: &str) -> anyhow::Result<reqwest::Client> {
    let c = client()?;
    let html = c.get(format!("{base}/login")).send().await?.text().await?;
    let marker = "name=\"_csrf\" value=\"";
    let start = html.find(marker).context("no CSRF token on /login")? + marker.len();
    let token = &html[start..start + html[start..].find('"').context("CSRF token")?];
    let r = c
        .post(format!("{base}/login"))
        .form(&[("email", email), ("password", PASSWORD), ("_csrf", token)])
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == reqwest::StatusCode::SEE_OTHER,
        "login of {email} answered {}",
        r.status()
    );
    Ok(c)
}

struct PhaseResult {
    requests: usize,
    errors: usize,
    rps: f64,
    p50: f64,
    p99: f64,
}

/// `concurrency` loops GET `path` for `seconds`, round-robin over the clients.
async fn hammer(
    clients: &[reqwest::Client],
    base: &str,
    path: &str,
    concurrency: usize,
    seconds: u64,
) -> PhaseResult {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let c = clients[i % clients.len()].clone();
        let url = format!("{base}{path}");
        let (stop, errors) = (stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match c.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        if r.bytes().await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = all.len();
    let (p50, p99) = p50_p99(&mut all);
    PhaseResult {
        requests,
        errors: errors.load(Ordering::Relaxed),
        rps: requests as f64 / elapsed,
        p50,
        p99,
    }
}

/// A simulated runner: registers, claims `n` jobs, then posts one event to
/// each every `every` (carrying its send time) and heartbeats, until `stop`.
struct FakeRunner {
    api: reqwest::Client,
    base: String,
    token: String,
}

impl FakeRunner {
    async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<reqwest::Response> {
        let r = self
            .api
            .post(format!("{}/api/runner/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "runner call {path} answered {}",
            r.status()
        );
        Ok(r)
    }

    async fn claim_all(&self, n: usize) -> anyhow::Result<Vec<protocol::JobSpec>> {
        self.post(
            "/register",
            &protocol::Register {
                name: "bench".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                gpus: Vec::new(),
                cpu_slots: n as u32,
                labels: vec!["cpu-only".into()],
            },
        )
        .await?;
        let mut specs = Vec::new();
        while specs.len() < n {
            let r = self
                .post(
                    "/claim",
                    &protocol::Claim {
                        free_cpu_slots: (n - specs.len()) as u32,
                        free_gpu_memory_mb: Vec::new(),
                        wait_ms: 1000,
                    },
                )
                .await?;
            if r.status() == reqwest::StatusCode::NO_CONTENT {
                anyhow::bail!("only {} of {n} bench jobs could be claimed", specs.len());
            }
            specs.push(r.json().await?);
        }
        Ok(specs)
    }
}

pub async fn run(args: WebBenchArgs, labs_dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.students > 0 && args.jobs > 0 && args.jobs <= args.students,
        "need 0 < --jobs ≤ --students"
    );
    std::fs::create_dir_all(data_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("bench-web-")
        .tempdir_in(data_dir)?;
    let db_url = format!("sqlite://{}/bench.db", scratch.path().display());
    println!(
        "seeding {} students and {} jobs …",
        args.students, args.jobs
    );
    let seeded = {
        let db = Db::connect(&db_url).await?;
        seed(&db, args.students, args.jobs, labs_dir).await?
    };
    // The server's log (warnings and errors) stays in the data folder.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", &db_url)
        .env("SANHAK_DATA_DIR", scratch.path())
        .env("SANHAK_LABS_DIR", labs_dir)
        .env("SANHAK_BIND", format!("127.0.0.1:{port}"))
        .env("SANHAK_LOG", "warn")
        .stdout(std::fs::File::create(
            data_dir.join("bench-web-server.log"),
        )?)
        .spawn()
        .context("starting `sanhak serve`")?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let probe = client()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if probe
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("logging in {} students …", args.students);
    let mut clients = Vec::with_capacity(args.students);
    for chunk in seeded.students.chunks(16) {
        let logins = chunk.iter().map(|e| login(&server.base, e));
        for c in futures::future::join_all(logins).await {
            clients.push(c?);
        }
    }
    let lab_page = format!("/courses/{}/labs/{LAB}", seeded.course_id);
    let mut rows: Vec<(String, String)> = Vec::new();
    println!(
        "pages: {} concurrent requests, {} s each …",
        args.concurrency, args.seconds
    );
    // Warm up (templates, the README cache, connections).
    hammer(
        &clients,
        &server.base,
        &lab_page,
        args.concurrency.min(8),
        1,
    )
    .await;
    let base = hammer(
        &clients,
        &server.base,
        "/healthz",
        args.concurrency,
        args.seconds,
    )
    .await;
    let lab = hammer(
        &clients,
        &server.base,
        &lab_page,
        args.concurrency,
        args.seconds,
    )
    .await;
    let dash = hammer(
        &clients,
        &server.base,
        "/dashboard",
        args.concurrency,
        args.seconds,
    )
    .await;
    let (rss_pages, _) = server.memory_mb();
    for (name, r) in [
        ("/healthz (baseline)", &base),
        ("lab page", &lab),
        ("dashboard", &dash),
    ] {
        rows.push((
            format!("{name}: req/s, p50, p99"),
            format!(
                "{:.0} req/s ({:.2}× baseline), p50 {:.1} ms, p99 {:.1} ms, {} requests, {} errors",
                r.rps,
                r.rps / base.rps,
                r.p50,
                r.p99,
                r.requests,
                r.errors
            ),
        ));
    }
    rows.push((
        "server memory after the page phases".into(),
        format!("{rss_pages:.0} MB resident"),
    ));

    // Live progress: streams over running jobs, events from a simulated runner.
    println!(
        "live progress: {} streams over {} running jobs …",
        args.streams, args.jobs
    );
    let runner = FakeRunner {
        api: client()?,
        base: server.base.clone(),
        token: seeded.runner_token.clone(),
    };
    let specs = runner.claim_all(args.jobs).await?;
    // Which student owns which job.
    let owners: Vec<usize> = {
        let db = Db::connect(&db_url).await?;
        let mut v = Vec::new();
        for s in &specs {
            let view = jobs::view(&db, &s.job_id)
                .await?
                .context("claimed job vanished")?;
            let email = users::by_id(&db, &view.user_id)
                .await?
                .context("job owner")?
                .email;
            v.push(
                seeded
                    .students
                    .iter()
                    .position(|e| *e == email)
                    .context("owner is a bench student")?,
            );
        }
        v
    };
    let delays = Arc::new(Mutex::new(Vec::<f64>::new()));
    let connected = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for i in 0..args.streams {
        let j = i % specs.len();
        let c = clients[owners[j]].clone();
        let url = format!("{}/jobs/{}/stream", server.base, specs[j].job_id);
        let (delays, connected, stop) = (delays.clone(), connected.clone(), stop.clone());
        streams.push(tokio::spawn(async move {
            let Ok(r) = c.get(&url).send().await else {
                return;
            };
            if !r.status().is_success() {
                return;
            }
            let mut body = r.bytes_stream();
            let mut buf = String::new();
            let mut counted = false;
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = "";
                    let mut data = "";
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data = v.trim();
                        }
                    }
                    if event == "state" && !counted {
                        counted = true;
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    if event == "log" {
                        let sent = serde_json::from_str::<String>(data).ok().and_then(|s| {
                            s.strip_prefix("sent ").and_then(|t| t.parse::<i64>().ok())
                        });
                        if let Some(sent) = sent {
                            delays.lock().await.push((now_ms() - sent) as f64);
                        }
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < args.streams {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = connected.load(Ordering::Relaxed);
    let mut seq = vec![0u64; specs.len()];
    let started = Instant::now();
    let mut last_beat = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let tick = Instant::now();
        let posts = specs.iter().enumerate().map(|(j, s)| {
            let batch = protocol::EventBatch {
                lease: s.lease.clone(),
                events: vec![protocol::JobEvent {
                    seq: seq[j],
                    at_ms: now_ms(),
                    kind: "log".into(),
                    data: serde_json::Value::String(format!("sent {}", now_ms())),
                }],
            };
            let path = format!("/jobs/{}/events", s.job_id);
            let runner = &runner;
            async move { runner.post(&path, &batch).await.map(|_| ()) }
        });
        for r in futures::future::join_all(posts).await {
            r?;
            sent += 1;
        }
        for s in seq.iter_mut() {
            *s += 1;
        }
        if last_beat.elapsed() > Duration::from_secs(5) {
            for s in &specs {
                runner
                    .post(
                        &format!("/jobs/{}/heartbeat", s.job_id),
                        &protocol::Heartbeat {
                            lease: s.lease.clone(),
                            phase: protocol::Phase::Running,
                        },
                    )
                    .await?;
            }
            last_beat = Instant::now();
        }
        if let Some(rest) = Duration::from_millis(args.event_ms).checked_sub(tick.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    // Let the last events arrive, then close the streams.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss_streams, peak) = server.memory_mb();
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        s.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = delays.lock().await.clone();
    let expected = sent * args.streams / specs.len().max(1);
    let (p50, p99) = p50_p99(&mut d);
    rows.push((
        "SSE streams held open".into(),
        format!("{held} of {}", args.streams),
    ));
    rows.push((
        "SSE event delay runner → browser: p50, p99".into(),
        format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms over {} deliveries (of about {expected} expected; {sent} events posted)",
            d.len()
        ),
    ));
    rows.push((
        format!("server memory with {held} streams open"),
        format!("{rss_streams:.0} MB resident, {peak:.0} MB peak"),
    ));
    println!();
    println!("{:<48} measured", "web app (sanhak serve, SQLite)");
    for (k, v) in rows {
        println!("{k:<48} {v}");
    }
    drop(server);
    Ok(())
}
