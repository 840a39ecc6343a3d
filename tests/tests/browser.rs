//! Browser flows in a real headless Chromium, driven over WebDriver
//! (chromedriver) with fantoccini, against the real server and an
//! in-process runner that trains in bubblewrap:
//!
//! 1. a student opens `fashion-transfer`, changes the learning rate,
//!    submits, watches the live curve advance and sees the grade;
//! 2. a bad recipe shows its error next to the field, and nothing is stored;
//! 3. the leaderboard hides private scores before the deadline;
//! 4. an instructor sets a deadline, a student submits late, and the
//!    gradebook shows the penalty.
//!
//! Screenshots go to `target/browser-artifacts/`. Needs the Debian packages
//! `chromium` and `chromium-driver` (`scripts/setup` installs them).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use sanhak::domain::{CourseRole, OrgKind, OrgRole, UserKind};
use sanhak_tests::{sanhak_bin, Backend, TestApp, PASSWORD};
use serde_json::json;

const LAB: &str = "fashion-transfer";

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(cmds: &[&str]) -> Option<PathBuf> {
    cmds.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn start_driver() -> Driver {
    let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]).unwrap_or_else(|| {
        panic!("chromedriver is required: install the Debian packages `chromium` and `chromium-driver` (scripts/setup does)")
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver {
        child,
        url: format!("http://{addr}"),
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])
        .expect("chromium is required: install the Debian package `chromium`");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,2000", "--no-proxy-server", "--disable-extensions"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact folder");
    dir
}

async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts().join(name);
    std::fs::write(&path, png).expect("save screenshot");
    path
}

async fn login(c: &Client, app: &TestApp, email: &str) {
    c.goto(&app.url("/login")).await.expect("login page");
    c.find(Locator::Css("#email"))
        .await
        .unwrap()
        .send_keys(email)
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form[action='/logout']"))
        .await
        .expect("logged in");
}

async fn logout(c: &Client) {
    c.find(Locator::Css("header.site form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("a[href='/login']"))
        .await
        .unwrap();
}

/// Sets an input's value as a user would and fires its events.
async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.expect("script")
}

async fn submissions(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn students_and_instructors_in_a_real_browser() {
    assert!(
        sanhak_sandbox::bwrap_path().is_some(),
        "bubblewrap is required: install the Debian package `bubblewrap`"
    );
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        // Small runs: the flows finish in seconds.
        s.job_step_scale = Some(0.5);
    })
    .await;
    let uni = app.create_org("browser-univ", OrgKind::University).await;
    let prof = app
        .create_user("prof@browser.ac.kr", UserKind::Instructor)
        .await;
    sanhak::db::orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Member)
        .await
        .unwrap();
    let course = sanhak::db::courses::create(
        &app.db,
        sanhak::db::courses::NewCourse {
            code: &sanhak::domain::CourseCode::parse("AI700").unwrap(),
            title: "Deep learning with industry",
            term: "2027-spring",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await
    .unwrap();
    let due = sanhak::db::now() + 3 * 86_400;
    sanhak::db::labs::put(
        &app.db,
        &course,
        LAB,
        &sanhak::db::labs::LabSettings {
            due_at: Some(due),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let minji = app
        .create_user("minji@browser.ac.kr", UserKind::Student)
        .await;
    sanhak::db::courses::enroll(&app.db, &course, &minji.id, CourseRole::Student)
        .await
        .unwrap();
    let worker = sanhak::worker::spawn_in_process(
        &app.state,
        app.addr,
        sanhak::worker::InProcess {
            trainer: Some(sanhak_bin()),
            rlib_cache: None,
        },
    )
    .await
    .expect("worker");

    let driver = start_driver();
    let c = browser(&driver).await;

    // Flow 1: open the lab, change the learning rate, submit, watch, see the grade.
    login(&c, &app, "minji@browser.ac.kr").await;
    c.goto(&app.url(&format!("/courses/{course}")))
        .await
        .unwrap();
    c.find(Locator::Css(&format!(
        "a[href='/courses/{course}/labs/{LAB}']"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#p-learning_rate"))
        .await
        .unwrap();
    assert!(text_of(&c, ".readme").await.contains("Learning goals"));
    type_into(&c, "#p-learning_rate", "0.003").await;
    type_into(&c, "#p-steps", "120").await;
    // The raw TOML view follows the form.
    let toml = js(&c, "return document.getElementById('recipe-toml').value").await;
    let toml = toml.as_str().unwrap_or_default().to_owned();
    assert!(toml.contains("learning_rate = 0.003"), "{toml}");
    assert!(toml.contains("steps = 120"), "{toml}");
    c.find(Locator::Css("#submit-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#job"))
        .await
        .unwrap();
    // The curve advances while the job runs: count its points over time.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(
            Instant::now() < deadline,
            "the job did not finish; points seen: {seen:?}"
        );
        let v = js(
            &c,
            "var s = document.getElementById('loss-chart'); var r = document.getElementById('result');\
             return [s ? Number(s.getAttribute('data-points') || 0) : -1, !!r, \
                     (document.getElementById('job') || {dataset: {}}).dataset.state || ''];",
        )
        .await;
        let points = v[0].as_i64().unwrap_or(-1);
        let graded = v[1].as_bool().unwrap_or(false);
        let state = v[2].as_str().unwrap_or("").to_owned();
        if seen.last() != Some(&points) {
            seen.push(points);
        }
        if graded {
            break;
        }
        if ["failed", "not_gradable", "cancelled"].contains(&state.as_str()) {
            let msg = js(
                &c,
                "var m = document.getElementById('message'); return m ? m.textContent : ''",
            )
            .await;
            panic!("the job ended {state}: {msg}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: Vec<i64> = seen.iter().copied().filter(|p| *p > 0).collect();
    assert!(
        live.len() >= 2,
        "the curve never advanced while training: {seen:?}"
    );
    assert!(
        live.windows(2).all(|w| w[0] < w[1]),
        "points only grow: {seen:?}"
    );
    let score: f64 = text_of(&c, "#score").await.parse().expect("a score");
    assert!(score >= 0.0);
    assert!(!text_of(&c, "#public-metric").await.is_empty());
    assert!(
        js(
            &c,
            "return Number(document.getElementById('loss-chart').getAttribute('data-points'))"
        )
        .await
        .as_i64()
        .unwrap()
            > 10
    );
    assert!(
        c.find(Locator::Css("#result svg.heatmap")).await.is_ok(),
        "a confusion matrix"
    );
    let shot = screenshot(&c, "flow1-graded-job.png").await;
    eprintln!("screenshot: {}", shot.display());

    // Flow 2: a bad learning rate shows its error next to the field; nothing is stored.
    let before = submissions(&app).await;
    c.goto(&app.url(&format!("/courses/{course}/labs/{LAB}")))
        .await
        .unwrap();
    type_into(&c, "#p-learning_rate", "5").await;
    c.find(Locator::Css("#submit-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let err = text_of(&c, "#err-learning_rate").await;
    assert!(err.contains("between") && err.contains("found 5"), "{err}");
    let field_has_error = js(&c, "return document.querySelector('[data-param=learning_rate]').classList.contains('has-error')").await;
    assert_eq!(field_has_error, json!(true));
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with(&format!("/labs/{LAB}")));
    // A bad value typed into the raw TOML view is caught the same way.
    c.find(Locator::Css("#tab-toml"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    type_into(
        &c,
        "#recipe-toml",
        "learning_rate = 0.001\nsteps = 40\nepochs = 3\n",
    )
    .await;
    c.find(Locator::Css("#submit-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let err = text_of(&c, "#toml-error").await;
    assert!(
        err.contains("epochs: give either steps or epochs, not both"),
        "{err}"
    );
    assert_eq!(submissions(&app).await, before, "nothing stored");
    screenshot(&c, "flow2-bad-recipe.png").await;

    // Flow 3: the leaderboard hides private scores before the deadline.
    c.goto(&app.url(&format!("/courses/{course}/labs/{LAB}/leaderboard")))
        .await
        .unwrap();
    let table = text_of(&c, "#leaderboard").await;
    assert!(!table.contains("Private score"), "{table}");
    assert!(text_of(&c, "#private-note")
        .await
        .contains("revealed after the deadline"));
    logout(&c).await;

    // Flow 4: the instructor moves the deadline into the past with a late
    // penalty; the student submits late; the gradebook shows the penalty.
    login(&c, &app, "prof@browser.ac.kr").await;
    c.goto(&app.url(&format!("/courses/{course}/labs/{LAB}/settings")))
        .await
        .unwrap();
    let past = sanhak::web::labs::input_time(Some(sanhak::db::now() - 3600));
    js(
        &c,
        &format!("document.getElementById('due_at').value = '{past}'; return true;"),
    )
    .await;
    c.find(Locator::Css("#late_policy option[value=penalty]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    type_into(&c, "#late_penalty_pct", "20").await;
    type_into(&c, "#late_days", "3").await;
    c.find(Locator::Css("#save-settings"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".flash"))
        .await
        .unwrap();
    logout(&c).await;
    login(&c, &app, "minji@browser.ac.kr").await;
    c.goto(&app.url(&format!("/courses/{course}/labs/{LAB}")))
        .await
        .unwrap();
    assert!(text_of(&c, "main")
        .await
        .contains("lose 20% per started day"));
    c.find(Locator::Css("#submit-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#job"))
        .await
        .unwrap();
    assert!(text_of(&c, "header.page")
        .await
        .contains("1 day late, −20%"));
    let deadline = Instant::now() + Duration::from_secs(240);
    while c.find(Locator::Css("#result")).await.is_err() {
        assert!(Instant::now() < deadline, "the late job did not finish");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // After the deadline, private scores show on the leaderboard.
    c.goto(&app.url(&format!("/courses/{course}/labs/{LAB}/leaderboard")))
        .await
        .unwrap();
    assert!(text_of(&c, "#leaderboard").await.contains("Private score"));
    logout(&c).await;
    login(&c, &app, "prof@browser.ac.kr").await;
    c.goto(&app.url(&format!("/courses/{course}/gradebook")))
        .await
        .unwrap();
    let book = text_of(&c, "#gradebook").await;
    assert!(book.contains("1 late"), "{book}");
    assert!(book.contains("−20%"), "{book}");
    screenshot(&c, "flow4-gradebook.png").await;

    c.close().await.unwrap();
    worker.abort();
}

/// Clicks the element and waits for the next page to show `then`.
async fn click_then(c: &Client, css: &str, then: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(then))
        .await
        .unwrap_or_else(|e| panic!("after {css}, {then}: {e}"));
}

/// The industry flow: a company member posts an internship, a university
/// admin approves it, a student applies with a CV, and the company moves the
/// application to "offer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internship_from_posting_to_offer() {
    use sanhak::domain::ConnectionState;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let uni = app.create_org("hanbit", OrgKind::University).await;
    let company = app.create_org("nuri", OrgKind::Company).await;
    let prof = app
        .create_user("prof@hanbit.ac.kr", UserKind::Instructor)
        .await;
    sanhak::db::orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Admin)
        .await
        .unwrap();
    let eng = app.create_user("eng@nuri.example", UserKind::Company).await;
    sanhak::db::orgs::set_member(&app.db, &company.id, &eng.id, OrgRole::Admin)
        .await
        .unwrap();
    let student = app
        .create_user("minji@students.hanbit.ac.kr", UserKind::Student)
        .await;
    let course = sanhak::db::courses::create(
        &app.db,
        sanhak::db::courses::NewCourse {
            code: &sanhak::domain::CourseCode::parse("AI501").unwrap(),
            title: "Fine-tuning",
            term: "2027-spring",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await
    .unwrap();
    sanhak::db::courses::enroll(&app.db, &course, &student.id, CourseRole::Student)
        .await
        .unwrap();
    sanhak::db::orgs::request_connection(&app.db, &company.id, &uni.id, "", &eng.id)
        .await
        .unwrap();
    sanhak::db::orgs::decide_connection(
        &app.db,
        &company.id,
        &uni.id,
        ConnectionState::Approved,
        &prof.id,
    )
    .await
    .unwrap();

    let driver = start_driver();
    let c = browser(&driver).await;

    // The company member writes the internship and submits it.
    login(&c, &app, "eng@nuri.example").await;
    c.goto(&app.url("/orgs/nuri/postings/new?kind=internship"))
        .await
        .unwrap();
    type_into(&c, "#title", "Summer ML engineering internship").await;
    type_into(&c, "#role", "ML engineer intern").await;
    type_into(&c, "#body", "Eight weeks with our **model team**.").await;
    type_into(&c, "#skills", "nlp, candle").await;
    type_into(&c, "#location", "Seoul").await;
    click_then(&c, "#posting-form button[type=submit]", "#submit-posting").await;
    let posting_url = c.current_url().await.unwrap().to_string();
    click_then(&c, "#submit-posting", "p.flash").await;
    assert_eq!(text_of(&c, "#posting-state").await, "Awaiting approval");
    logout(&c).await;

    // The university admin sees the notification and approves.
    login(&c, &app, "prof@hanbit.ac.kr").await;
    assert!(text_of(&c, "#nav-notifications").await.contains('1'));
    c.goto(&posting_url).await.unwrap();
    click_then(&c, "#approve-posting", "p.flash").await;
    assert_eq!(text_of(&c, "#posting-state").await, "Approved");
    logout(&c).await;

    // The company opens it for applications.
    login(&c, &app, "eng@nuri.example").await;
    c.goto(&posting_url).await.unwrap();
    click_then(&c, "#open-posting", "p.flash").await;
    assert_eq!(text_of(&c, "#posting-state").await, "Open");
    logout(&c).await;

    // The student finds it, and applies with a statement and a CV.
    login(&c, &app, "minji@students.hanbit.ac.kr").await;
    c.goto(&app.url("/postings?skill=nlp")).await.unwrap();
    click_then(&c, "ul.postings a[href^='/postings/']", "#apply-form").await;
    type_into(
        &c,
        "#statement",
        "I built a Korean intent classifier in AI501.",
    )
    .await;
    let cv = artifacts().canonicalize().unwrap().join("cv-minji.pdf");
    std::fs::write(
        &cv,
        b"%PDF-1.7\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n",
    )
    .unwrap();
    c.find(Locator::Css("#cv"))
        .await
        .unwrap()
        .send_keys(cv.to_str().unwrap())
        .await
        .unwrap();
    click_then(&c, "#apply-button", "#application-state").await;
    assert_eq!(text_of(&c, "#application-state").await, "Applied");
    logout(&c).await;

    // The company reviews and makes an offer.
    login(&c, &app, "eng@nuri.example").await;
    c.goto(&posting_url).await.unwrap();
    click_then(&c, "a[href^='/applications/']", "#move-under_review").await;
    click_then(&c, "#move-under_review", "#move-interview").await;
    click_then(&c, "#move-interview", "#move-offer").await;
    click_then(&c, "#move-offer", "p.flash").await;
    assert_eq!(text_of(&c, "#application-state").await, "Offer");
    let history = text_of(&c, "#application-history").await;
    assert!(history.contains("Interview") && history.contains("Offer"));
    screenshot(&c, "internship-offer.png").await;
    logout(&c).await;

    // The student sees the offer in the notifications and the status.
    login(&c, &app, "minji@students.hanbit.ac.kr").await;
    assert!(text_of(&c, "#nav-notifications").await.contains('3'));
    c.goto(&app.url("/applications")).await.unwrap();
    assert!(text_of(&c, "main table").await.contains("Offer"));
    c.close().await.unwrap();
}
