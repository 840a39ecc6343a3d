//! `sanhak bench runner`: the runner service's speed, each figure next to a
//! baseline measured in the same run.
//!
//! - **Overhead from submit to training start** (recipe lab, warm runner):
//!   an app on SQLite and an in-process worker over loopback, as in
//!   `sanhak demo`. Each job is submitted through the API and timed to the
//!   runner's `running` heartbeat (claimed, sandbox starting) and to the
//!   trainer's first event (sandbox up, trainer running). Baselines: a bare
//!   process spawn (`/bin/true`) and the same trainer started outside the
//!   sandbox, to its first event.
//! - **Queue claims per second on PostgreSQL** with 8 concurrent runners:
//!   claims alone (each runner keeps its leases), and claim + complete cycles
//!   as runners work; baseline: `SELECT 1` round trips on the same
//!   connections.
//! - **Code-lab compile time** (warm cache, in the sandbox) is measured by
//!   `sanhak-runner`'s compile benchmark where code labs are built.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sanhak_runner::protocol::{self, Resources, SubmissionKind};

use crate::config::Settings;
use crate::db::jobs::{self, Capacity, NewSubmission, QueuePolicy};
use crate::db::{courses, runners, tokens, Db};
use crate::domain::{CourseCode, CourseRole, DisplayName, Email, OrgKind, Slug, UserKind};
use crate::startup::Application;

/// Benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    #[command(flatten)]
    Training(sanhak_runner::bench::BenchCommand),
    /// The runner service: submit-to-start overhead, queue claims per second.
    Runner(RunnerBenchArgs),
    /// The web app under load: the lab page and dashboard (req/s, p50, p99),
    /// open live-progress streams (event delay) and the server's memory.
    Web(crate::bench_web::WebBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunnerBenchArgs {
    /// Jobs timed for the submit-to-start overhead (after one warm-up job).
    #[arg(long, default_value_t = 20)]
    pub jobs: usize,
    /// Jobs claimed in the queue benchmark.
    #[arg(long, default_value_t = 4000)]
    pub claims: usize,
    /// Concurrent runners in the queue benchmark.
    #[arg(long, default_value_t = 8)]
    pub runners: usize,
    /// PostgreSQL server for the queue benchmark (a scratch database is
    /// created and dropped there).
    #[arg(
        long,
        env = "SANHAK_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// Skip the queue benchmark.
    #[arg(long)]
    pub no_queue: bool,
    /// Skip the overhead benchmark.
    #[arg(long)]
    pub no_overhead: bool,
    /// Compiles timed in the code-lab compile benchmark (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub compiles: usize,
}

impl BenchCommand {
    pub async fn run(self, labs_dir: PathBuf, data_dir: PathBuf) -> anyhow::Result<()> {
        match self {
            BenchCommand::Training(cmd) => {
                tokio::task::spawn_blocking(move || cmd.run(&labs_dir)).await?
            }
            BenchCommand::Runner(args) => run_runner_bench(args, labs_dir, data_dir).await,
            BenchCommand::Web(args) => crate::bench_web::run(args, &labs_dir, &data_dir).await,
        }
    }
}

/// p50 and p99 of samples in milliseconds.
fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i.min(samples.len() - 1)]
    };
    (at(0.50), at(0.99))
}

async fn run_runner_bench(
    args: RunnerBenchArgs,
    labs_dir: PathBuf,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    let mut table: Vec<(String, String)> = Vec::new();
    if args.compiles > 0 {
        let runs = args.compiles;
        let labs = labs_dir.clone();
        let rows =
            tokio::task::spawn_blocking(move || compile_times(runs, &labs, &data_dir)).await??;
        table.extend(rows);
    }
    if !args.no_overhead {
        let o = overhead(&args, &labs_dir).await?;
        table.extend(o);
    }
    if !args.no_queue {
        let q = queue_claims(&args).await?;
        table.extend(q);
    }
    println!();
    println!("{:<58} measured", "runner service");
    for (k, v) in table {
        println!("{k:<58} {v}");
    }
    Ok(())
}

const LAB: &str = "fashion-transfer";
const CODE_LAB: &str = "lora-from-scratch";

/// Compiles of the code lab's reference `src/lib.rs` in the sandbox with a
/// warm rlib cache, next to the same rustc calls on the host.
fn compile_times(
    runs: usize,
    labs_dir: &Path,
    data_dir: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    use sanhak_runner::codelab::compile::{bench_compile, Prebuilt};
    let cache = data_dir.join("rlibs");
    let t = Instant::now();
    let prebuilt = Prebuilt::prepare(&cache)?;
    let prepare_s = t.elapsed().as_secs_f64();
    let lab = sanhak_runner::lab::Lab::load(&labs_dir.join(CODE_LAB))?;
    let source = std::fs::read_to_string(labs_dir.join(CODE_LAB).join("solution/src/lib.rs"))?;
    let scratch = tempfile::tempdir()?;
    let b = bench_compile(&prebuilt, &lab, &source, runs, scratch.path())?;
    Ok(vec![
        (
            "rlib prebuild (cache hit when warm)".into(),
            format!("{prepare_s:.1} s"),
        ),
        (
            format!("code-lab compile in the sandbox ({} runs)", b.runs),
            format!(
                "p50 {:.2} s  p99 {:.2} s",
                b.sandboxed_p50_s, b.sandboxed_p99_s
            ),
        ),
        (
            "baseline: same rustc calls, no sandbox".into(),
            format!("p50 {:.2} s  p99 {:.2} s", b.bare_p50_s, b.bare_p99_s),
        ),
        (
            "ratio: sandboxed / bare (p50)".into(),
            format!("{:.2}", b.sandboxed_p50_s / b.bare_p50_s),
        ),
    ])
}
const OVERHEAD_STEP_SCALE: f64 = 0.01;

async fn overhead(
    args: &RunnerBenchArgs,
    labs_dir: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    anyhow::ensure!(
        sanhak_sandbox::bwrap_path().is_some(),
        "the overhead benchmark needs bubblewrap: install the Debian package `bubblewrap`"
    );
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        data_dir: Some(dir.path().to_path_buf()),
        bind: Some("127.0.0.1:0".parse()?),
        labs_dir: Some(labs_dir.to_path_buf()),
        log: Some("warn".into()),
        job_step_scale: Some(OVERHEAD_STEP_SCALE),
        ..Settings::default()
    };
    let config = settings.resolve()?;
    let app = Application::build(config).await?;
    let addr = app.local_addr()?;
    let state = app.state.clone();
    let server = tokio::spawn(app.run_until_stopped());
    let worker = crate::worker::spawn_in_process(&state, addr, Default::default()).await?;
    let db = &state.db;
    let (course_id, token) = bench_class(db).await?;
    crate::db::labs::add(db, &course_id, LAB, None).await?;
    let recipe = std::fs::read_to_string(labs_dir.join(LAB).join("starter/recipe.toml"))
        .context("reading the lab's starter recipe")?;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/courses/{course_id}/labs/{LAB}/submissions");
    let mut to_claim = Vec::new();
    let mut to_event = Vec::new();
    for i in 0..=args.jobs {
        let t0 = jobs::now_ms();
        let r = http
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "recipe": recipe }))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "submit: {}", r.text().await?);
        let job_id = r.json::<serde_json::Value>().await?["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let view = loop {
            let v = jobs::view(db, &job_id).await?.context("job vanished")?;
            if jobs::is_final(&v.state) {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        anyhow::ensure!(
            view.state == "done",
            "job {job_id} ended {}: {}",
            view.state,
            view.message
        );
        let first = jobs::events(db, &job_id, None, 1).await?;
        if i == 0 {
            continue; // warm-up: the lab package is fetched and laid out
        }
        if let Some(started) = view.started_ms {
            to_claim.push((started - t0) as f64);
        }
        if let Some(e) = first.first() {
            to_event.push((e.at_ms - t0) as f64);
        }
    }
    worker.abort();
    server.abort();

    // Baselines in the same run.
    let mut spawn = Vec::new();
    for _ in 0..args.jobs.max(5) {
        let t = Instant::now();
        Command::new("/bin/true").status()?;
        spawn.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let exe = std::env::current_exe()?;
    let recipe_file = dir.path().join("recipe.toml");
    std::fs::write(&recipe_file, &recipe)?;
    let mut bare = Vec::new();
    for i in 0..args.jobs.clamp(3, 10) {
        let out = dir.path().join(format!("bare-{i}"));
        let t = Instant::now();
        let mut child = Command::new(&exe)
            .args(["lab", "train"])
            .arg(labs_dir.join(LAB))
            .arg("--recipe")
            .arg(&recipe_file)
            .arg("--out")
            .arg(&out)
            .args(["--step-scale", &OVERHEAD_STEP_SCALE.to_string()])
            .env("SANHAK_DATA_DIR", dir.path())
            .env("SANHAK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("trainer stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
        child.wait()?;
    }
    let (c50, c99) = percentiles(&mut to_claim);
    let (e50, e99) = percentiles(&mut to_event);
    let (s50, s99) = percentiles(&mut spawn);
    let (b50, b99) = percentiles(&mut bare);
    Ok(vec![
        (
            format!(
                "submit → claimed, sandbox starting ({} jobs)",
                to_claim.len()
            ),
            format!("p50 {c50:.1} ms  p99 {c99:.1} ms"),
        ),
        (
            "submit → trainer's first event (in bwrap)".into(),
            format!("p50 {e50:.1} ms  p99 {e99:.1} ms"),
        ),
        (
            "baseline: bare process spawn (/bin/true)".into(),
            format!("p50 {s50:.2} ms  p99 {s99:.2} ms"),
        ),
        (
            "baseline: same trainer, no sandbox, to first event".into(),
            format!("p50 {b50:.1} ms  p99 {b99:.1} ms"),
        ),
        (
            "ratio: submit→first event / bare trainer start (p50)".into(),
            format!("{:.2}", e50 / b50),
        ),
    ])
}

/// A university, an instructor's course, one student with an API token.
async fn bench_class(db: &Db) -> anyhow::Result<(String, String)> {
    let uni = crate::db::orgs::create(
        db,
        &Slug::parse("bench-uni").map_err(anyhow::Error::msg)?,
        "Bench University",
        OrgKind::University,
        "",
    )
    .await?;
    let hash = crate::secrets::hash_password("bench-password-0000")?;
    let mk = |email: &str, kind| {
        let email = Email::parse(email).map_err(anyhow::Error::msg);
        let name = DisplayName::parse("Bench").map_err(anyhow::Error::msg);
        let hash = hash.clone();
        async move { anyhow::Ok(crate::db::users::create(db, &email?, &name?, &hash, kind).await?) }
    };
    let prof = mk("prof@bench.test", UserKind::Instructor).await?;
    let student = mk("student@bench.test", UserKind::Student).await?;
    let code = CourseCode::parse("BENCH1").map_err(anyhow::Error::msg)?;
    let course_id = courses::create(
        db,
        courses::NewCourse {
            code: &code,
            title: "Bench",
            term: "bench",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await?;
    courses::enroll(db, &course_id, &student.id, CourseRole::Student).await?;
    let token = tokens::create(db, &student.id, "bench").await?;
    Ok((course_id, token))
}

async fn queue_claims(args: &RunnerBenchArgs) -> anyhow::Result<Vec<(String, String)>> {
    use sqlx::Connection as _;
    let admin = &args.postgres;
    let name = format!("sanhak_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .with_context(|| format!("the queue benchmark needs PostgreSQL at {admin}"))?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let result = queue_claims_on(args, &url).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    result
}

async fn queue_claims_on(
    args: &RunnerBenchArgs,
    url: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let db = Db::connect(url).await?;
    db.migrate().await?;
    // 8 courses × 50 students; jobs spread over them.
    let hash = "bench-not-a-login".to_owned();
    let uni = crate::db::orgs::create(
        &db,
        &Slug::parse("bench-q").map_err(anyhow::Error::msg)?,
        "Q",
        OrgKind::University,
        "",
    )
    .await?;
    let prof = crate::db::users::create(
        &db,
        &Email::parse("prof@q.test").map_err(anyhow::Error::msg)?,
        &DisplayName::parse("Q").map_err(anyhow::Error::msg)?,
        &hash,
        UserKind::Instructor,
    )
    .await?;
    let mut course_ids = Vec::new();
    for c in 0..8 {
        let code = CourseCode::parse(&format!("Q{c}")).map_err(anyhow::Error::msg)?;
        course_ids.push(
            courses::create(
                &db,
                courses::NewCourse {
                    code: &code,
                    title: "Q",
                    term: "q",
                    university_id: &uni.id,
                    description: "",
                    instructor_id: &prof.id,
                },
            )
            .await?,
        );
    }
    let mut students = Vec::new();
    for s in 0..50 {
        let u = crate::db::users::create(
            &db,
            &Email::parse(&format!("s{s}@q.test")).map_err(anyhow::Error::msg)?,
            &DisplayName::parse("S").map_err(anyhow::Error::msg)?,
            &hash,
            UserKind::Student,
        )
        .await?;
        students.push(u.id);
    }
    let policy = QueuePolicy::default();
    seed_jobs(&db, args.claims, &course_ids, &students).await?;
    let (runner, _) = runners::create(&db, "bench", None).await?;
    let db = Arc::new(db);

    // Baseline: SELECT 1 round trips on the same pool, same concurrency, same time budget.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.runners {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let _: i64 = sqlx::query_scalar("SELECT CAST(1 AS BIGINT)")
                    .fetch_one(&db.pool)
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut pings = 0;
    for t in tasks {
        pings += t.await??;
    }
    let ping_rate = pings as f64 / t.elapsed().as_secs_f64();

    // Each runner claims a job and reports it done, as runners do, with the
    // default one running job per student per course.
    let (cycled, secs) = claim_all(&db, &runner, &policy, args.runners, true).await?;
    let cycled = cycled.len();
    anyhow::ensure!(cycled == args.claims, "cycled {cycled} of {}", args.claims);
    let cycle_rate = cycled as f64 / secs;

    // Claims alone: a fresh queue, each runner claiming as fast as it can and
    // keeping its leases (the per-student limit lifted so that the queue can
    // drain without completions; each claim still takes the student's lock
    // and re-counts).
    seed_jobs(&db, args.claims, &course_ids, &students).await?;
    let unlimited = QueuePolicy {
        max_running_per_student: i64::MAX,
        ..policy.clone()
    };
    let (claimed, secs) = claim_all(&db, &runner, &unlimited, args.runners, false).await?;
    let claimed = claimed.len();
    anyhow::ensure!(
        claimed == args.claims,
        "claimed {claimed} of {}",
        args.claims
    );
    let claim_rate = claimed as f64 / secs;
    Ok(vec![
        (
            format!(
                "PostgreSQL claims/s ({} runners, {} queued, leases kept)",
                args.runners, args.claims
            ),
            format!("{claim_rate:.0}/s"),
        ),
        (
            format!(
                "PostgreSQL claim + complete cycles/s ({} runners)",
                args.runners
            ),
            format!("{cycle_rate:.0}/s"),
        ),
        (
            "baseline: SELECT 1 round trips/s, same pool".into(),
            format!("{ping_rate:.0}/s"),
        ),
        (
            "ratio: claims / round trips".into(),
            format!("{:.3}", claim_rate / ping_rate),
        ),
        (
            "ratio: cycles / round trips".into(),
            format!("{:.3}", cycle_rate / ping_rate),
        ),
    ])
}

async fn seed_jobs(
    db: &Db,
    n: usize,
    course_ids: &[String],
    students: &[String],
) -> anyhow::Result<()> {
    let policy = QueuePolicy::default();
    let resources = Resources {
        cpu_slots: 1,
        gpu_count: 0,
        gpu_memory_mb: 0,
        wall_seconds: 60,
        memory_mb: 512,
    };
    for i in 0..n {
        let new = NewSubmission {
            course_id: &course_ids[i % course_ids.len()],
            lab_id: LAB,
            lab_version: "1",
            lab_hash: "h",
            user_id: &students[(i / course_ids.len()) % students.len()],
            kind: SubmissionKind::Recipe,
            content: "",
            resources,
            step_scale: 1.0,
            due_at_ms: None,
            late_seconds: 0,
            penalty_pct: 0.0,
            limits: jobs::AttemptLimits::default(),
            regrade: None,
        };
        if let Err(refused) = jobs::submit(db, &new, &policy).await? {
            anyhow::bail!("the bench's submission was refused: {refused:?}");
        }
    }
    Ok(())
}

fn done_report(lease: String) -> protocol::Complete {
    protocol::Complete {
        lease,
        outcome: protocol::Outcome::Graded,
        points: Some(1.0),
        max_points: 1.0,
        metric: None,
        public_metric: None,
        message: String::new(),
        report: serde_json::Value::Null,
        artifacts: vec![],
        usage: protocol::Usage::default(),
    }
}

/// `runners` tasks claim until the queue is empty (completing each job when
/// `complete`); returns the claimed (job, lease) pairs and the seconds it took.
async fn claim_all(
    db: &Arc<Db>,
    runner: &str,
    policy: &QueuePolicy,
    runners: usize,
    complete: bool,
) -> anyhow::Result<(Vec<(String, String)>, f64)> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..runners {
        let (db, runner, policy) = (db.clone(), runner.to_owned(), policy.clone());
        tasks.push(tokio::spawn(async move {
            let cap = Capacity {
                free_cpu_slots: 1,
                free_gpu_memory_mb: vec![],
            };
            let mut mine = Vec::new();
            while let Some(c) = jobs::claim(&db, &runner, &cap, &policy).await? {
                if complete {
                    jobs::complete(&db, &c.job_id, &done_report(c.lease.clone()), &policy).await?;
                }
                mine.push((c.job_id, c.lease));
            }
            anyhow::Ok(mine)
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await??);
    }
    Ok((claimed, t.elapsed().as_secs_f64()))
}
