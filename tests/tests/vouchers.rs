//! GPU-credit vouchers on both backends: granting, holding at submission,
//! exact charging at the end, running out at exactly zero, the refusal,
//! the per-student cap, concurrent submissions racing for the last credit,
//! expired vouchers, the university's pool, the append-only ledger, the
//! dashboards' access rules and the CSV export.
//!
//! The app runs with a CPU rate of 1 (a CPU-second costs a GPU-second), so
//! a run of the lab holds its 2 CPU slots × 300 s = 600 GPU-seconds. A job's
//! end goes through the real queue: a claim, then the runner's report.

use reqwest::StatusCode;
use sanhak::config::Settings;
use sanhak::db::courses::{self, NewCourse};
use sanhak::db::jobs::{self, Capacity, Report};
use sanhak::db::vouchers::{self, NewVoucher, Scope, MS_PER_HOUR};
use sanhak::db::{runners, Db};
use sanhak::domain::{CourseCode, CourseRole, OrgKind, OrgRole, UserKind};
use sanhak_runner::protocol;
use sanhak_tests::{location, Api, Backend, Browser, TestApp};

const LAB: &str = "fashion-transfer";
const RECIPE: &str = "learning_rate = 0.002\nsteps = 40\nbatch_size = 32\n";
/// What one run of the lab holds at a CPU rate of 1: 2 slots × 300 s.
const RUN_HOLD: i64 = 600_000;

fn metered(s: &mut Settings) {
    s.cpu_charge_rate = Some(1.0);
}

/// Runs a story on SQLite and on PostgreSQL, with a CPU rate of 1.
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = TestApp::spawn_with(Backend::Sqlite, metered).await;
                ($body)(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = TestApp::spawn_with(Backend::Postgres, metered).await;
                ($body)(app).await;
            }
        }
    };
}

struct World {
    uni_id: String,
    uni_slug: String,
    course: String,
    prof: Browser,
    admin: Browser,
    runner: String,
}

async fn world(app: &TestApp) -> World {
    let uni = app.create_org("gpu-univ", OrgKind::University).await;
    let (prof, prof_b) = app.logged_in("prof@gpu.ac.kr", UserKind::Instructor).await;
    orgs_member(app, &uni.id, &prof.id, OrgRole::Member).await;
    let (_, admin) = app.logged_in("admin@gpu.test", UserKind::Admin).await;
    let course = new_course(app, &uni.id, "GPU1", &prof.id).await;
    let (runner, _) = runners::create(&app.db, "test-runner", None)
        .await
        .expect("runner");
    World {
        uni_id: uni.id,
        uni_slug: uni.slug,
        course,
        prof: prof_b,
        admin,
        runner,
    }
}

async fn orgs_member(app: &TestApp, org: &str, user: &str, role: OrgRole) {
    sanhak::db::orgs::set_member(&app.db, org, user, role)
        .await
        .unwrap();
}

async fn new_course(app: &TestApp, uni: &str, code: &str, prof: &str) -> String {
    let code = CourseCode::parse(code).unwrap();
    let id = courses::create(
        &app.db,
        NewCourse {
            code: &code,
            title: "GPU course",
            term: "2027-spring",
            university_id: uni,
            description: "",
            instructor_id: prof,
        },
    )
    .await
    .unwrap();
    sanhak::db::labs::add(&app.db, &id, LAB, None)
        .await
        .unwrap();
    id
}

async fn student(app: &TestApp, course: &str, email: &str) -> (String, Browser) {
    let (u, b) = app.logged_in(email, UserKind::Student).await;
    courses::enroll(&app.db, course, &u.id, CourseRole::Student)
        .await
        .unwrap();
    (u.id, b)
}

/// Grants a voucher directly (amounts the form cannot type exactly).
async fn grant(app: &TestApp, scope: &Scope, amount_ms: i64, from: i64, until: i64) -> String {
    let admin = match sanhak::db::users::by_email(&app.db, "admin@gpu.test")
        .await
        .unwrap()
    {
        Some(u) => u.id,
        None => String::new(),
    };
    vouchers::grant(
        &app.db,
        &NewVoucher {
            scope,
            amount_ms,
            tf_label: "",
            valid_from: from,
            valid_until: until,
            source: "test programme",
            granted_by: &admin,
        },
    )
    .await
    .unwrap()
}

fn now() -> i64 {
    sanhak::db::now()
}

async fn submit(b: &Browser, course: &str) -> reqwest::Response {
    b.post_form(
        &format!("/courses/{course}/labs/{LAB}/submit"),
        &[("recipe", RECIPE)],
    )
    .await
}

fn job_of(r: &reqwest::Response) -> String {
    let loc = location(r);
    loc.strip_prefix("/jobs/")
        .unwrap_or_else(|| panic!("not a job page: {loc} ({})", r.status()))
        .to_owned()
}

/// Claims the next job and reports it graded with this usage.
async fn finish(app: &TestApp, w: &World, cpu_seconds: f64, gpu_seconds: f64) -> String {
    let policy = &app.state.queue.policy;
    let cap = Capacity {
        free_cpu_slots: 16,
        free_gpu_memory_mb: vec![80_000],
    };
    let c = jobs::claim(&app.db, &w.runner, &cap, policy)
        .await
        .unwrap()
        .expect("a job to claim");
    let report = protocol::Complete {
        lease: c.lease.clone(),
        outcome: protocol::Outcome::Graded,
        points: Some(5.0),
        max_points: 10.0,
        metric: Some(0.8),
        public_metric: Some(0.8),
        message: "graded".into(),
        report: serde_json::json!({}),
        artifacts: vec![],
        usage: protocol::Usage {
            wall_seconds: cpu_seconds / 2.0,
            cpu_seconds,
            gpu_seconds,
        },
    };
    let r = jobs::complete(&app.db, &c.job_id, &report, policy)
        .await
        .unwrap();
    assert_eq!(r, Report::Recorded("done".into()));
    c.job_id
}

/// Sum of a voucher's ledger: its balance.
async fn balance(db: &Db, voucher: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_ms), 0) AS BIGINT) FROM voucher_ledger WHERE voucher_id = $1",
    )
    .bind(voucher)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// `(kind, amount)` of a job's ledger rows, in order.
async fn rows_of_job(db: &Db, job: &str) -> Vec<(String, i64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, amount_ms FROM voucher_ledger WHERE job_id = $1 ORDER BY at, id",
    )
    .bind(job)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows
}

/// The text inside the element with this id (first match, tags stripped).
fn element_text(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let open_end = html[start..].find('>').unwrap() + start + 1;
    let close = html[open_end..].find("</").unwrap() + open_end;
    html[open_end..close].trim().to_owned()
}

fn day(ts: i64) -> String {
    sanhak::web::templates::datetime(&ts)[..10].to_owned()
}

both!(charging_is_exact, |app: TestApp| async move {
    let w = world(&app).await;
    // A site admin grants 1 GPU-hour through the form.
    let r = w
        .admin
        .post_form(
            "/admin/vouchers",
            &[
                ("scope", &format!("course:{}", w.course)),
                ("project_id", ""),
                ("gpu_hours", "1"),
                ("tf_label", "160 TF"),
                ("valid_from", &day(now())),
                ("valid_until", &day(now() + 30 * 86_400)),
                ("source", "=K-Cloud voucher"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = w.admin.get_text("/admin/vouchers").await;
    assert!(html.contains("160 TF") && html.contains("1 GPU-hour granted"));
    let list = vouchers::of_scope(&app.db, &Scope::course(&w.course))
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let voucher = list[0].id.clone();
    assert_eq!(balance(&app.db, &voucher).await, MS_PER_HOUR);

    let (_, minji) = student(&app, &w.course, "minji@gpu.ac.kr").await;
    let (_, html) = minji
        .get_text(&format!("/courses/{}/labs/{LAB}", w.course))
        .await;
    let line = element_text(&html, "gpu-budget");
    assert!(line.starts_with("1 GPU-hour left in the course"), "{line}");
    assert!(
        line.ends_with("A run holds up to 0.167 GPU-hours until it ends."),
        "{line}"
    );
    // Submitting holds the run's worst case.
    let job = job_of(&submit(&minji, &w.course).await);
    assert_eq!(
        rows_of_job(&app.db, &job).await,
        [("hold".into(), -RUN_HOLD)]
    );
    assert_eq!(balance(&app.db, &voucher).await, MS_PER_HOUR - RUN_HOLD);
    // Its end releases the hold and charges exactly what it measured.
    assert_eq!(finish(&app, &w, 123.456, 0.0).await, job);
    assert_eq!(
        rows_of_job(&app.db, &job).await,
        [
            ("hold".into(), -RUN_HOLD),
            ("release".into(), RUN_HOLD),
            ("charge".into(), -123_456)
        ]
    );
    assert_eq!(balance(&app.db, &voucher).await, MS_PER_HOUR - 123_456);

    // A GPU job is charged its GPU-seconds, whatever CPU time it used.
    let entry = app.state.queue.catalog.get(LAB).unwrap();
    let prof = sanhak::db::users::by_email(&app.db, "prof@gpu.ac.kr")
        .await
        .unwrap()
        .unwrap();
    let gpu_job = jobs::NewSubmission {
        course_id: &w.course,
        lab_id: LAB,
        lab_version: &entry.package.version,
        lab_hash: &entry.package.hash,
        user_id: &prof.id,
        kind: protocol::SubmissionKind::Recipe,
        content: RECIPE,
        resources: protocol::Resources {
            cpu_slots: 1,
            gpu_count: 1,
            gpu_memory_mb: 1_000,
            wall_seconds: 100,
            memory_mb: 512,
        },
        step_scale: 1.0,
        due_at_ms: None,
        late_seconds: 0,
        penalty_pct: 0.0,
        limits: jobs::AttemptLimits::default(),
        regrade: None,
    };
    let (_, gpu) = jobs::submit(&app.db, &gpu_job, &app.state.queue.policy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rows_of_job(&app.db, &gpu).await,
        [("hold".into(), -100_000)]
    );
    assert_eq!(finish(&app, &w, 99.0, 7.25).await, gpu);
    assert_eq!(
        balance(&app.db, &voucher).await,
        MS_PER_HOUR - 123_456 - 7_250
    );

    // The dashboard: balance, use by lab and by student, the chart, the forecast.
    let (status, html) = w
        .prof
        .get_text(&format!("/courses/{}/budget", w.course))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(element_text(&html, "budget-available"), "0.964 GPU-hours");
    assert_eq!(element_text(&html, "budget-used"), "130.71 GPU-s");
    assert_eq!(element_text(&html, "budget-held"), "0 GPU-s");
    assert!(html.contains("minji"), "by student");
    assert!(html.contains("<svg class=\"chart bars\""), "charts");
    // 130.706 GPU-s a day runs the 3469.294 left out in 26.5 days, before
    // the voucher's 30 days end.
    let forecast = element_text(&html, "budget-forecast");
    assert!(
        forecast.starts_with("At the current rate (130.71 GPU-s a day over the last day)"),
        "{forecast}"
    );
    assert!(
        forecast.contains(&format!(
            "the budget runs out around {}, before the vouchers end on {}.",
            day(now() + (3_469_294.0 / 130_706.0 * 86_400.0) as i64),
            day(now() + 30 * 86_400)
        )),
        "{forecast}"
    );

    // The CSV: every row, exact amounts, formula-like text neutralised.
    let r = w
        .prof
        .get(&format!("/courses/{}/budget.csv", w.course))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("gpu-ledger-GPU1-2027-spring.csv"));
    let body = r.text().await.unwrap();
    let mut csv = csv::Reader::from_reader(body.as_bytes());
    let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 7, "grant + 3 per job:\n{body}");
    let amounts: Vec<&str> = records.iter().map(|r| &r[4]).collect();
    assert_eq!(
        amounts,
        ["3600.000", "-600.000", "600.000", "-123.456", "-100.000", "100.000", "-7.250"]
    );
    assert_eq!(&records[3][5], "123.456", "the measured use");
    assert_eq!(&records[0][2], "'=K-Cloud voucher");
    assert!(records[1][9].contains("minji@gpu.ac.kr"));
});

both!(
    runs_out_at_exactly_zero_with_a_clear_refusal,
    |app: TestApp| async move {
        let w = world(&app).await;
        let voucher = grant(
            &app,
            &Scope::course(&w.course),
            RUN_HOLD + 300_000,
            now() - 60,
            now() + 86_400,
        )
        .await;
        let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
        let (_, b) = student(&app, &w.course, "b@gpu.ac.kr").await;
        let (c_id, c) = student(&app, &w.course, "c@gpu.ac.kr").await;
        let job_a = job_of(&submit(&a, &w.course).await);
        // B's run holds what is left: less than a whole run.
        let job_b = job_of(&submit(&b, &w.course).await);
        assert_eq!(
            rows_of_job(&app.db, &job_b).await,
            [("hold".into(), -300_000)]
        );
        assert_eq!(balance(&app.db, &voucher).await, 0);
        // Nothing left: C is refused on the page and through the API, nothing stored.
        let r = submit(&c, &w.course).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let html = r.text().await.unwrap();
        assert!(html.contains("GPU budget is used up"), "{html}");
        assert!(html.contains("Runs already started will finish"));
        let token = sanhak::db::tokens::create(&app.db, &c_id, "cli")
            .await
            .unwrap();
        let r = Api::new(&app, Some(token))
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/courses/{}/labs/{LAB}/submissions", w.course),
            )
            .json(&serde_json::json!({ "recipe": RECIPE }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "budget_exhausted");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("GPU budget is used up"));
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions WHERE user_id = $1")
            .bind(&c_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(stored, 0);
        // The lab page says so before C tries.
        let (_, html) = c
            .get_text(&format!("/courses/{}/labs/{LAB}", w.course))
            .await;
        assert!(element_text(&html, "closed").contains("GPU budget is used up"));

        // Running jobs finish. A ran over its hold: it is charged the hold.
        assert_eq!(finish(&app, &w, 700.0, 0.0).await, job_a);
        let rows = rows_of_job(&app.db, &job_a).await;
        assert_eq!(rows[2], ("charge".into(), -RUN_HOLD));
        assert_eq!(balance(&app.db, &voucher).await, 0);
        // B used less than it held: the rest comes back.
        assert_eq!(finish(&app, &w, 250.0, 0.0).await, job_b);
        assert_eq!(balance(&app.db, &voucher).await, 50_000);
        // C's run takes the last 50 GPU-seconds and uses them exactly.
        let job_c = job_of(&submit(&c, &w.course).await);
        assert_eq!(
            rows_of_job(&app.db, &job_c).await,
            [("hold".into(), -50_000)]
        );
        assert_eq!(finish(&app, &w, 50.0, 0.0).await, job_c);
        assert_eq!(balance(&app.db, &voucher).await, 0);
        let charged: i64 = sqlx::query_scalar(
            "SELECT CAST(-SUM(amount_ms) AS BIGINT) FROM voucher_ledger WHERE kind = 'charge'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(
            charged,
            RUN_HOLD + 300_000,
            "the whole voucher, not a millisecond more"
        );
        assert_eq!(submit(&a, &w.course).await.status(), StatusCode::CONFLICT);
    }
);

both!(per_student_cap, |app: TestApp| async move {
    let w = world(&app).await;
    grant(
        &app,
        &Scope::course(&w.course),
        MS_PER_HOUR,
        now() - 60,
        now() + 86_400,
    )
    .await;
    // 0.2 GPU-hours = 720 GPU-seconds per student.
    let r = w
        .prof
        .post_form(
            &format!("/courses/{}/budget/cap", w.course),
            &[("cap_gpu_hours", "0.2")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = w
        .prof
        .get_text(&format!("/courses/{}/budget", w.course))
        .await;
    assert!(element_text(&html, "cap-text").contains("at most 0.2 GPU-hours"));
    // A bad cap is a form error, and changes nothing.
    let r = w
        .prof
        .post_form(
            &format!("/courses/{}/budget/cap", w.course),
            &[("cap_gpu_hours", "-3")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        vouchers::student_cap(&app.db, &w.course).await.unwrap(),
        Some(720_000)
    );

    let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
    let (_, b) = student(&app, &w.course, "b@gpu.ac.kr").await;
    let first = job_of(&submit(&a, &w.course).await);
    assert_eq!(
        rows_of_job(&app.db, &first).await,
        [("hold".into(), -RUN_HOLD)]
    );
    finish(&app, &w, 600.0, 0.0).await;
    // The second run may only hold what is left of the cap.
    let second = job_of(&submit(&a, &w.course).await);
    assert_eq!(
        rows_of_job(&app.db, &second).await,
        [("hold".into(), -120_000)]
    );
    finish(&app, &w, 500.0, 0.0).await;
    let r = submit(&a, &w.course).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("You have used your share of this course")
            && html.contains("GPU budget (0.2 GPU-hours)"),
        "{html}"
    );
    assert!(
        element_text(&html, "gpu-budget").contains("Your share: 0 GPU-s of 0.2 GPU-hours left.")
    );
    // Another student, and the staff, are not held back by A's cap.
    job_of(&submit(&b, &w.course).await);
    job_of(&submit(&w.prof, &w.course).await);
    // Removing the cap lets A run again.
    let r = w
        .prof
        .post_form(
            &format!("/courses/{}/budget/cap", w.course),
            &[("cap_gpu_hours", "")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    job_of(&submit(&a, &w.course).await);
});

/// Submits from `n` students at once; returns how many were accepted.
async fn race(app: &TestApp, course: &str, n: usize, tag: &str) -> (usize, usize) {
    let mut browsers = Vec::new();
    for i in 0..n {
        browsers.push(student(app, course, &format!("{tag}{i}@gpu.ac.kr")).await.1);
    }
    // Read each form's token first, so the posts themselves start together.
    let mut tokens = Vec::new();
    for b in &browsers {
        tokens.push(b.csrf().await);
    }
    let sends = browsers.iter().zip(&tokens).map(|(b, t)| {
        b.client
            .post(format!("{}/courses/{course}/labs/{LAB}/submit", b.base))
            .form(&[("recipe", RECIPE), ("_csrf", t.as_str())])
            .send()
    });
    let results = futures::future::join_all(sends).await;
    let mut accepted = 0;
    let mut refused = 0;
    for r in results {
        match r.unwrap().status() {
            StatusCode::SEE_OTHER => accepted += 1,
            StatusCode::CONFLICT => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (accepted, refused)
}

both!(
    concurrent_submissions_cannot_both_take_the_last_credit,
    |app: TestApp| async move {
        let w = world(&app).await;
        // Credit for exactly one run: of eight at once, one gets it.
        let one = grant(
            &app,
            &Scope::course(&w.course),
            RUN_HOLD,
            now() - 60,
            now() + 86_400,
        )
        .await;
        assert_eq!(race(&app, &w.course, 8, "r").await, (1, 7));
        assert_eq!(balance(&app.db, &one).await, 0);
        let holds: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM voucher_ledger WHERE kind = 'hold'")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(holds, 1);

        // Credit for two and a half runs in another course: three get some.
        let prof = sanhak::db::users::by_email(&app.db, "prof@gpu.ac.kr")
            .await
            .unwrap()
            .unwrap();
        let other = new_course(&app, &w.uni_id, "GPU2", &prof.id).await;
        let v = grant(
            &app,
            &Scope::course(&other),
            2 * RUN_HOLD + RUN_HOLD / 2,
            now() - 60,
            now() + 86_400,
        )
        .await;
        assert_eq!(race(&app, &other, 8, "s").await, (3, 5));
        assert_eq!(balance(&app.db, &v).await, 0);
        let negative: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT voucher_id FROM voucher_ledger GROUP BY voucher_id \
             HAVING SUM(amount_ms) < 0) n",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(negative, 0);
    }
);

both!(expired_vouchers_do_not_count, |app: TestApp| async move {
    let w = world(&app).await;
    let course = Scope::course(&w.course);
    let expired = grant(
        &app,
        &course,
        10 * MS_PER_HOUR,
        now() - 30 * 86_400,
        now() - 1,
    )
    .await;
    let upcoming = grant(
        &app,
        &course,
        10 * MS_PER_HOUR,
        now() + 86_400,
        now() + 2 * 86_400,
    )
    .await;
    let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
    // The course is metered, but no voucher is valid now.
    let r = submit(&a, &w.course).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (_, html) = w
        .prof
        .get_text(&format!("/courses/{}/budget", w.course))
        .await;
    assert_eq!(element_text(&html, "budget-available"), "0 GPU-s");
    assert!(html.contains(">expired<") && html.contains(">upcoming<"));
    // A valid one is drawn on; the others keep their balance.
    let valid = grant(&app, &course, MS_PER_HOUR, now() - 60, now() + 86_400).await;
    let job = job_of(&submit(&a, &w.course).await);
    finish(&app, &w, 10.0, 0.0).await;
    assert_eq!(balance(&app.db, &valid).await, MS_PER_HOUR - 10_000);
    assert_eq!(balance(&app.db, &expired).await, 10 * MS_PER_HOUR);
    assert_eq!(balance(&app.db, &upcoming).await, 10 * MS_PER_HOUR);
    let on_expired: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM voucher_ledger WHERE job_id = $1 AND voucher_id <> $2",
    )
    .bind(&job)
    .bind(&valid)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(on_expired, 0);
});

both!(
    courses_without_vouchers_draw_on_their_university,
    |app: TestApp| async move {
        let w = world(&app).await;
        // Not metered at all: no voucher anywhere, no ledger rows.
        let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
        let free = job_of(&submit(&a, &w.course).await);
        assert!(rows_of_job(&app.db, &free).await.is_empty());
        let (_, html) = a
            .get_text(&format!("/courses/{}/labs/{LAB}", w.course))
            .await;
        assert!(element_text(&html, "gpu-budget").starts_with("Not metered"));
        finish(&app, &w, 30.0, 0.0).await;
        // The university's pool pays for a course with no voucher of its own.
        let pool = grant(
            &app,
            &Scope::org(&w.uni_id),
            MS_PER_HOUR,
            now() - 60,
            now() + 86_400,
        )
        .await;
        let job = job_of(&submit(&a, &w.course).await);
        finish(&app, &w, 30.0, 0.0).await;
        assert_eq!(balance(&app.db, &pool).await, MS_PER_HOUR - 30_000);
        assert_eq!(rows_of_job(&app.db, &job).await.len(), 3);
        let (_, html) = a
            .get_text(&format!("/courses/{}/labs/{LAB}", w.course))
            .await;
        let line = element_text(&html, "gpu-budget");
        assert!(line.contains("left in your university"), "{line}");
        // Its org admin sees the use by course; a plain member may not look.
        let (head, head_b) = app.logged_in("head@gpu.ac.kr", UserKind::Instructor).await;
        orgs_member(&app, &w.uni_id, &head.id, OrgRole::Admin).await;
        let (status, html) = head_b
            .get_text(&format!("/orgs/{}/budget", w.uni_slug))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<th scope=\"row\">GPU1</th>"), "{html}");
        assert_eq!(
            w.prof
                .get(&format!("/orgs/{}/budget", w.uni_slug))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        // The course's own dashboard says where its runs draw from.
        let (_, html) = w
            .prof
            .get_text(&format!("/courses/{}/budget", w.course))
            .await;
        assert!(
            element_text(&html, "budget-note").contains("gpu-univ"),
            "{html}"
        );
    }
);

/// A ledger row: id, voucher, kind, amount, job, measured, note, time.
type LedgerTuple = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    String,
    i64,
);

/// Every ledger row, in order, as text.
async fn ledger_snapshot(db: &Db) -> Vec<String> {
    let rows: Vec<LedgerTuple> =
        sqlx::query_as(
            "SELECT id, voucher_id, kind, amount_ms, job_id, measured_ms, note, at FROM voucher_ledger \
             ORDER BY id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
    rows.iter().map(|r| format!("{r:?}")).collect()
}

both!(ledger_rows_are_never_changed, |app: TestApp| async move {
    let w = world(&app).await;
    let mut seen: Vec<String> = Vec::new();
    let mut check = |now: Vec<String>, step: &str| {
        for old in &seen {
            assert!(now.contains(old), "{step} changed or removed {old}");
        }
        assert!(now.len() >= seen.len());
        seen = now;
    };
    let v = grant(
        &app,
        &Scope::course(&w.course),
        MS_PER_HOUR,
        now() - 60,
        now() + 86_400,
    )
    .await;
    check(ledger_snapshot(&app.db).await, "grant");
    let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
    job_of(&submit(&a, &w.course).await);
    check(ledger_snapshot(&app.db).await, "hold");
    finish(&app, &w, 42.0, 0.0).await;
    check(ledger_snapshot(&app.db).await, "charge");
    // A cancelled run gives its whole hold back.
    let cancelled = job_of(&submit(&a, &w.course).await);
    let r = a.post_form(&format!("/jobs/{cancelled}/cancel"), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        rows_of_job(&app.db, &cancelled).await,
        [
            ("hold".into(), -RUN_HOLD),
            ("release".into(), RUN_HOLD),
            ("charge".into(), 0)
        ]
    );
    check(ledger_snapshot(&app.db).await, "cancel");
    // Adjustments are rows too; one that would go below zero is refused.
    let r = w
        .admin
        .post_form(
            &format!("/admin/vouchers/{v}/adjust"),
            &[("gpu_hours", "-0.5"), ("note", "returned to the programme")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    check(ledger_snapshot(&app.db).await, "adjust");
    let before = ledger_snapshot(&app.db).await;
    let r = w
        .admin
        .post_form(
            &format!("/admin/vouchers/{v}/adjust"),
            &[("gpu_hours", "-1"), ("note", "too much")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(ledger_snapshot(&app.db).await, before);
    assert_eq!(
        balance(&app.db, &v).await,
        MS_PER_HOUR / 2 - 42_000,
        "the balance is the sum of the rows"
    );
});

both!(
    dashboards_and_grants_are_guarded,
    |app: TestApp| async move {
        let w = world(&app).await;
        grant(
            &app,
            &Scope::course(&w.course),
            MS_PER_HOUR,
            now() - 60,
            now() + 86_400,
        )
        .await;
        let budget = format!("/courses/{}/budget", w.course);
        // A student of the course may not see its dashboard or ledger.
        let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
        assert_eq!(a.get(&budget).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            a.get(&format!("{budget}.csv")).await.status(),
            StatusCode::FORBIDDEN
        );
        // Nor may the instructor of another course.
        let (other, other_b) = app.logged_in("other@gpu.ac.kr", UserKind::Instructor).await;
        new_course(&app, &w.uni_id, "OTH1", &other.id).await;
        assert_eq!(other_b.get(&budget).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            other_b
                .post_form(&format!("{budget}/cap"), &[("cap_gpu_hours", "5")])
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        // Only site admins grant.
        let form = [
            ("scope", format!("course:{}", w.course)),
            ("project_id", String::new()),
            ("gpu_hours", "100".into()),
            ("tf_label", String::new()),
            ("valid_from", day(now())),
            ("valid_until", day(now() + 86_400)),
            ("source", "self-service".into()),
        ];
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for b in [&w.prof, &a, &other_b] {
            assert_eq!(
                b.post_form("/admin/vouchers", &form).await.status(),
                StatusCode::FORBIDDEN
            );
            assert_eq!(
                b.get("/admin/vouchers").await.status(),
                StatusCode::FORBIDDEN
            );
        }
        assert_eq!(
            vouchers::of_scope(&app.db, &Scope::course(&w.course))
                .await
                .unwrap()
                .len(),
            1
        );
        // A bad grant names its fields and stores nothing.
        let mut bad = form.clone();
        bad[2] = ("gpu_hours", "-4");
        bad[5] = ("valid_until", "2020-01-01");
        let r = w.admin.post_form("/admin/vouchers", &bad).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = r.text().await.unwrap();
        assert!(html.contains("Give a number of GPU-hours"));
        assert!(html.contains("the voucher must end after it starts"));
        // Projects (another area's table) get vouchers by id; site admins see them.
        let project = uuid::Uuid::new_v4().to_string();
        let mut p = form.clone();
        p[0] = ("scope", "project");
        p[1] = ("project_id", project.as_str());
        assert_eq!(
            w.admin.post_form("/admin/vouchers", &p).await.status(),
            StatusCode::SEE_OTHER
        );
        let (status, html) = w
            .admin
            .get_text(&format!("/admin/vouchers/projects/{project}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(element_text(&html, "budget-available"), "100 GPU-hours");
        // The TA and the instructor see the course's.
        assert_eq!(w.prof.get(&budget).await.status(), StatusCode::OK);
        let (ta, ta_b) = app.logged_in("ta@gpu.ac.kr", UserKind::Student).await;
        courses::enroll(&app.db, &w.course, &ta.id, CourseRole::Ta)
            .await
            .unwrap();
        assert_eq!(ta_b.get(&budget).await.status(), StatusCode::OK);
        let (_, html) = ta_b.get_text(&budget).await;
        assert!(
            !html.contains("Save the cap"),
            "only instructors set the cap"
        );
    }
);

both!(
    holds_of_jobs_ended_elsewhere_are_settled_by_the_sweep,
    |app: TestApp| async move {
        let w = world(&app).await;
        let v = grant(
            &app,
            &Scope::course(&w.course),
            MS_PER_HOUR,
            now() - 60,
            now() + 86_400,
        )
        .await;
        let (_, a) = student(&app, &w.course, "a@gpu.ac.kr").await;
        let (_, b) = student(&app, &w.course, "b@gpu.ac.kr").await;
        // Two jobs end outside the report path (a discarded regrade and a
        // job the reaper gave up on end this way): one measured 10 CPU-seconds.
        let ended = job_of(&submit(&a, &w.course).await);
        let other = job_of(&submit(&b, &w.course).await);
        sqlx::query("UPDATE jobs SET state = 'not_gradable', cpu_seconds = 10 WHERE id = $1")
            .bind(&ended)
            .execute(&app.db.pool)
            .await
            .unwrap();
        let settled = vouchers::settle_finished(&app.db, 1.0).await.unwrap();
        // The reaper may have swept it first; either way it is settled once.
        assert!(settled <= 1);
        assert_eq!(vouchers::settle_finished(&app.db, 1.0).await.unwrap(), 0);
        assert_eq!(
            rows_of_job(&app.db, &ended).await,
            [
                ("hold".into(), -RUN_HOLD),
                ("release".into(), RUN_HOLD),
                ("charge".into(), -10_000)
            ]
        );
        // The running one keeps its hold.
        assert_eq!(rows_of_job(&app.db, &other).await.len(), 1);
        assert_eq!(balance(&app.db, &v).await, MS_PER_HOUR - 10_000 - RUN_HOLD);
    }
);
