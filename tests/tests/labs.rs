//! The lab experience over HTTP, on both backends: the lab page and its
//! form, the course's rules (deadlines, late penalties, extensions, attempt
//! and daily limits), the job page, the leaderboard and the gradebook.
//! Grading itself is covered by the runner-service tests; here a job's end
//! is written to the database the way the runner's report would write it.

use reqwest::StatusCode;
use sanhak::db::Db;
use sanhak::domain::{CourseRole, OrgKind, OrgRole, UserKind};
use sanhak_tests::{both_backends, location, Browser, TestApp};

const LAB: &str = "fashion-transfer";
const RECIPE: &str = "learning_rate = 0.002\nsteps = 40\nbatch_size = 32\n";

struct Course {
    id: String,
    prof: Browser,
}

async fn course_with_lab(app: &TestApp) -> Course {
    let uni = app.create_org("lab-univ", OrgKind::University).await;
    let (prof, b) = app.logged_in("prof@lab.ac.kr", UserKind::Instructor).await;
    sanhak::db::orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Member)
        .await
        .unwrap();
    let r = b
        .post_form(
            "/courses/new",
            &[
                ("university_id", &uni.id),
                ("code", "ai600"),
                ("title", "Transfer learning"),
                ("term", "2027-spring"),
                ("description", ""),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let id = location(&r).trim_start_matches("/courses/").to_owned();
    let r = b
        .post_form(&format!("/courses/{id}/labs"), &[("lab_id", LAB)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), format!("/courses/{id}/labs/{LAB}/settings"));
    Course { id, prof: b }
}

async fn student(
    app: &TestApp,
    course: &Course,
    email: &str,
) -> (sanhak::db::users::User, Browser) {
    let (u, b) = app.logged_in(email, UserKind::Student).await;
    sanhak::db::courses::enroll(&app.db, &course.id, &u.id, CourseRole::Student)
        .await
        .unwrap();
    (u, b)
}

/// Saves lab settings through the settings form; `fields` override the defaults.
async fn set_rules(course: &Course, fields: &[(&str, &str)]) {
    let mut all: Vec<(&str, &str)> = vec![
        ("release_at", ""),
        ("due_at", ""),
        ("late_policy", "none"),
        ("late_penalty_pct", "0"),
        ("late_days", "0"),
        ("max_attempts", ""),
        ("max_per_day", ""),
        ("points", ""),
        ("counts", "best"),
        ("private_scores", "after_deadline"),
    ];
    for (k, v) in fields {
        if let Some(slot) = all.iter_mut().find(|(n, _)| n == k) {
            slot.1 = v;
        }
    }
    let r = course
        .prof
        .post_form(&format!("/courses/{}/labs/{LAB}/settings", course.id), &all)
        .await;
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, StatusCode::SEE_OTHER, "settings refused: {body}");
}

/// A `datetime-local` value `seconds` from now (UTC).
fn at(seconds: i64) -> String {
    sanhak::web::labs::input_time(Some(sanhak::db::now() + seconds))
}

async fn submit(b: &Browser, course: &Course, recipe: &str) -> reqwest::Response {
    b.post_form(
        &format!("/courses/{}/labs/{LAB}/submit", course.id),
        &[("recipe", recipe)],
    )
    .await
}

async fn submissions(db: &Db, user_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM submissions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Ends a job as a runner's report would: graded with these points and metrics.
async fn grade(db: &Db, job_id: &str, points: f64, public: f64, metric: f64) {
    sqlx::query(
        "UPDATE jobs SET state = 'done', outcome = 'graded', points = $1, max_points = 100, \
         public_metric = $2, metric = $3, finished_ms = enqueued_ms + 1000, started_ms = enqueued_ms + 10, \
         lease = NULL WHERE id = $4",
    )
    .bind(points)
    .bind(public)
    .bind(metric)
    .bind(job_id)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn set_state(db: &Db, job_id: &str, state: &str) {
    sqlx::query("UPDATE jobs SET state = $1, lease = NULL WHERE id = $2")
        .bind(state)
        .bind(job_id)
        .execute(&db.pool)
        .await
        .unwrap();
}

fn job_of(r: &reqwest::Response) -> String {
    let loc = location(r);
    loc.strip_prefix("/jobs/")
        .unwrap_or_else(|| panic!("not a job page: {loc}"))
        .to_owned()
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

both_backends!(
    lab_page_shows_instructions_form_and_rules,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        set_rules(
            &course,
            &[
                ("due_at", &at(3 * 86_400)),
                ("late_policy", "penalty"),
                ("late_penalty_pct", "10"),
                ("late_days", "3"),
                ("max_attempts", "5"),
                ("max_per_day", "2"),
                ("points", "20"),
            ],
        )
        .await;
        let (_, b) = student(&app, &course, "minji@lab.ac.kr").await;
        let (status, html) = b.get_text(&format!("/courses/{}", course.id)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains(&format!("/courses/{}/labs/{LAB}", course.id)));
        // The dashboard lists it under "Due soon".
        let (_, html) = b.get_text("/dashboard").await;
        assert!(html.contains("id=\"due-soon\""));
        assert!(html.contains("Transfer learning on Fashion-MNIST"));

        let (status, html) = b
            .get_text(&format!("/courses/{}/labs/{LAB}", course.id))
            .await;
        assert_eq!(status, StatusCode::OK);
        // The README, rendered and highlighted.
        assert!(html.contains("<h2>Learning goals</h2>"), "README rendered");
        // The form from the schema, with its bounds, and the raw TOML starter.
        assert!(html.contains("data-param=\"learning_rate\""));
        assert!(html.contains("id=\"p-schedule\""));
        assert!(html.contains("name=\"recipe\""));
        assert!(html.contains("learning_rate = 1e-4"), "the starter recipe");
        assert!(html.contains("id=\"schema\""));
        // The rules.
        assert!(html.contains("lose 10% per started day, for up to 3 days"));
        assert_eq!(element_text(&html, "attempts-left"), "0 used, 5 left");
        assert_eq!(element_text(&html, "day-left"), "0 made, 2 left");
        assert!(html.contains("CPU only"));
        // The hidden split's files are never named or shown.
        assert!(!html.contains("hidden/test-labels"));
    }
);

both_backends!(
    bad_recipes_are_refused_next_to_their_field,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (me, b) = student(&app, &course, "minji@lab.ac.kr").await;
        let r = submit(&b, &course, "learning_rate = 5.0\nsteps = 40\nbogus = 1\n").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = r.text().await.unwrap();
        let err = element_text(&html, "err-learning_rate");
        assert!(
            err.contains("between 0.000001 and 0.1") || err.contains("between"),
            "{err}"
        );
        assert!(err.contains("found 5"), "{err}");
        // The unknown key is named above the form; the text is kept for fixing.
        assert!(element_text(&html, "form-error").contains("unknown parameter"));
        assert!(html.contains("bogus = 1"));
        let r = submit(&b, &course, "learning_rate = [").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("not valid TOML"));
        assert_eq!(submissions(&app.db, &me.id).await, 0, "nothing stored");
    }
);

both_backends!(
    late_submissions_carry_the_penalty_or_are_refused,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (me, b) = student(&app, &course, "minji@lab.ac.kr").await;
        // Due 30 hours ago: two started days late, 15% each.
        set_rules(
            &course,
            &[
                ("due_at", &at(-30 * 3600)),
                ("late_policy", "penalty"),
                ("late_penalty_pct", "15"),
                ("late_days", "3"),
            ],
        )
        .await;
        let r = submit(&b, &course, RECIPE).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let job = job_of(&r);
        let (late, penalty): (i64, f64) = sqlx::query_as(
        "SELECT s.late_seconds, s.penalty_pct FROM submissions s JOIN jobs j ON j.submission_id = s.id WHERE j.id = $1",
    )
    .bind(&job)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
        assert!(late >= 30 * 3600, "{late}");
        assert_eq!(penalty, 30.0);
        let (_, page) = b.get_text(&format!("/jobs/{job}")).await;
        assert!(page.contains("2 days late, −30%"));

        // No late submissions: refused with the deadline named, nothing stored.
        set_rules(&course, &[("due_at", &at(-3600)), ("late_policy", "none")]).await;
        let r = submit(&b, &course, RECIPE).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let html = r.text().await.unwrap();
        assert!(element_text(&html, "form-error").contains("takes no late submissions"));
        assert_eq!(submissions(&app.db, &me.id).await, 1);

        // An extension for this student reopens it, on time.
        let r = course
            .prof
            .post_form(
                &format!("/courses/{}/labs/{LAB}/extensions", course.id),
                &[("user_id", &me.id), ("due_at", &at(86_400))],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, html) = b
            .get_text(&format!("/courses/{}/labs/{LAB}", course.id))
            .await;
        assert!(html.contains("your extension"));
        let r = submit(&b, &course, RECIPE).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(submissions(&app.db, &me.id).await, 2);
        let other = student(&app, &course, "jisoo@lab.ac.kr").await;
        assert_eq!(
            submit(&other.1, &course, RECIPE).await.status(),
            StatusCode::CONFLICT
        );

        // Past the late window: refused.
        set_rules(
            &course,
            &[
                ("due_at", &at(-5 * 86_400)),
                ("late_policy", "penalty"),
                ("late_penalty_pct", "10"),
                ("late_days", "2"),
            ],
        )
        .await;
        let r = submit(&other.1, &course, RECIPE).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.text().await.unwrap().contains("Late submissions closed"));
    }
);

both_backends!(
    attempt_and_daily_limits_hold_and_not_gradable_is_free,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (me, b) = student(&app, &course, "minji@lab.ac.kr").await;
        set_rules(&course, &[("max_attempts", "2")]).await;
        let first = job_of(&submit(&b, &course, RECIPE).await);
        let second = submit(&b, &course, RECIPE).await;
        assert_eq!(second.status(), StatusCode::SEE_OTHER);
        let r = submit(&b, &course, RECIPE).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.text().await.unwrap().contains("used all 2 attempts"));
        // A not-gradable attempt gives its attempt back.
        set_state(&app.db, &first, "not_gradable").await;
        assert_eq!(
            submit(&b, &course, RECIPE).await.status(),
            StatusCode::SEE_OTHER
        );
        assert_eq!(
            submit(&b, &course, RECIPE).await.status(),
            StatusCode::CONFLICT
        );
        assert_eq!(submissions(&app.db, &me.id).await, 3);

        // Daily limit: one in 24 hours.
        set_rules(&course, &[("max_per_day", "1")]).await;
        let (me2, b2) = student(&app, &course, "jisoo@lab.ac.kr").await;
        assert_eq!(
            submit(&b2, &course, RECIPE).await.status(),
            StatusCode::SEE_OTHER
        );
        let r = submit(&b2, &course, RECIPE).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.text().await.unwrap().contains("in the last 24 hours"));
        assert_eq!(submissions(&app.db, &me2.id).await, 1);

        // The API applies the same rules.
        let token = sanhak::db::tokens::create(&app.db, &me2.id, "cli")
            .await
            .unwrap();
        let api = sanhak_tests::Api::new(&app, Some(token));
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/courses/{}/labs/{LAB}/submissions", course.id),
            )
            .json(&serde_json::json!({ "recipe": RECIPE }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "daily_limit");
    }
);

both_backends!(
    concurrent_submissions_cannot_pass_the_limit,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (me, b) = student(&app, &course, "minji@lab.ac.kr").await;
        set_rules(&course, &[("max_attempts", "3")]).await;
        let token = b.csrf().await;
        let url = format!("{}/courses/{}/labs/{LAB}/submit", b.base, course.id);
        let sends = (0..10).map(|_| {
            b.client
                .post(&url)
                .form(&[("recipe", RECIPE), ("_csrf", token.as_str())])
                .send()
        });
        let results = futures::future::join_all(sends).await;
        let accepted = results
            .iter()
            .filter(|r| r.as_ref().unwrap().status() == StatusCode::SEE_OTHER)
            .count();
        assert_eq!(accepted, 3);
        assert_eq!(submissions(&app.db, &me.id).await, 3);
    }
);

both_backends!(
    unreleased_labs_are_hidden_from_students,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        set_rules(
            &course,
            &[("release_at", &at(86_400)), ("due_at", &at(7 * 86_400))],
        )
        .await;
        let (me, b) = student(&app, &course, "minji@lab.ac.kr").await;
        let (_, html) = b.get_text(&format!("/courses/{}", course.id)).await;
        assert!(!html.contains(&format!("/labs/{LAB}")));
        assert_eq!(
            b.get(&format!("/courses/{}/labs/{LAB}", course.id))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            submit(&b, &course, RECIPE).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(submissions(&app.db, &me.id).await, 0);
        // Staff see it, marked.
        let (_, html) = course
            .prof
            .get_text(&format!("/courses/{}", course.id))
            .await;
        assert!(html.contains("not open to students"));
    }
);

both_backends!(settings_are_checked, |app: TestApp| async move {
    let course = course_with_lab(&app).await;
    for (field, value, message) in [
        ("late_penalty_pct", "150", "late_penalty_pct"),
        ("max_attempts", "0", "max_attempts"),
        ("due_at", "next tuesday", "due_at"),
        ("points", "-3", "points"),
    ] {
        let mut fields = vec![
            ("late_policy", "none"),
            ("counts", "best"),
            ("private_scores", "after_deadline"),
        ];
        fields.push((field, value));
        let r = course
            .prof
            .post_form(
                &format!("/courses/{}/labs/{LAB}/settings", course.id),
                &fields,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert!(element_text(&r.text().await.unwrap(), "settings-error").contains(message));
    }
    // A TA or a student cannot change them.
    let (_, b) = student(&app, &course, "minji@lab.ac.kr").await;
    let r = b
        .post_form(
            &format!("/courses/{}/labs/{LAB}/settings", course.id),
            &[
                ("late_policy", "none"),
                ("counts", "best"),
                ("private_scores", "released"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
});

both_backends!(
    job_page_shows_grade_history_and_diff_to_its_owner_only,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (_, b) = student(&app, &course, "minji@lab.ac.kr").await;
        let (_, other) = student(&app, &course, "jisoo@lab.ac.kr").await;
        let first = job_of(&submit(&b, &course, RECIPE).await);
        let second = job_of(&submit(&b, &course, &RECIPE.replace("0.002", "0.003")).await);
        // While queued: the queue position and a cancel button.
        let (_, html) = b.get_text(&format!("/jobs/{second}")).await;
        assert!(html.contains("id=\"cancel-button\""));
        assert!(element_text(&html, "queue-position").contains("ahead in the queue"));
        grade(&app.db, &second, 80.0, 0.83, 0.81).await;
        let (status, html) = b.get_text(&format!("/jobs/{second}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(element_text(&html, "score"), "80");
        assert_eq!(element_text(&html, "public-metric"), "0.8300");
        // The whole hidden set's metric is not shown before the deadline.
        assert!(!html.contains("id=\"metric\""));
        assert!(!html.contains("0.8100"));
        // The diff against the attempt before.
        assert!(html.contains("<span class=\"d del\">-learning_rate = 0.002"));
        assert!(html.contains("<span class=\"d add\">+learning_rate = 0.003"));
        assert!(html.contains(&format!("/jobs/{first}")));
        // Another student cannot see it; staff can, with the whole-set metric.
        assert_eq!(
            other.get(&format!("/jobs/{second}")).await.status(),
            StatusCode::FORBIDDEN
        );
        let (status, html) = course.prof.get_text(&format!("/jobs/{second}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(element_text(&html, "metric"), "0.8100");
        // Cancelling the queued first attempt from its page.
        let r = b.post_form(&format!("/jobs/{first}/cancel"), &[]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, html) = b.get_text(&format!("/jobs/{first}")).await;
        assert!(html.contains("state-cancelled"));
        assert_eq!(
            other
                .post_form(&format!("/jobs/{second}/cancel"), &[])
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
    }
);

both_backends!(
    leaderboard_hides_private_scores_until_release,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        set_rules(&course, &[("due_at", &at(86_400))]).await;
        let (_, a) = student(&app, &course, "minji@lab.ac.kr").await;
        let (_, bb) = student(&app, &course, "jisoo@lab.ac.kr").await;
        let ja = job_of(&submit(&a, &course, RECIPE).await);
        let jb = job_of(&submit(&bb, &course, RECIPE).await);
        grade(&app.db, &ja, 70.0, 0.7712, 0.7650).await;
        grade(&app.db, &jb, 90.0, 0.9123, 0.9050).await;
        // Minji picks a display name; Jisoo stays anonymous.
        let r = a
            .post_form(
                &format!("/courses/{}/leaderboard-name", course.id),
                &[("name", "Transfer Queen"), ("back", "/evil//x")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let path = format!("/courses/{}/labs/{LAB}/leaderboard", course.id);
        let (status, html) = a.get_text(&path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("0.9123") && html.contains("0.7712"));
        assert!(
            !html.contains("0.9050") && !html.contains("0.7650"),
            "private scores hidden"
        );
        assert!(!html.contains("Private score</th>"));
        assert!(html.contains("Transfer Queen"));
        assert!(html.contains("Anonymous student"));
        assert!(!html.contains("jisoo"), "no real names to students");
        let first_row = html.find("0.9123").unwrap() < html.find("0.7712").unwrap();
        assert!(first_row, "higher accuracy ranks first");
        // Staff see private scores and real names.
        let (_, html) = course.prof.get_text(&path).await;
        assert!(html.contains("0.9050") && html.contains("jisoo"));
        // After the deadline, students see them too.
        set_rules(&course, &[("due_at", &at(-60))]).await;
        let (_, html) = a.get_text(&path).await;
        assert!(html.contains("0.9050") && html.contains("0.7650"));
        // Unless the instructor keeps them hidden.
        set_rules(
            &course,
            &[("due_at", &at(-60)), ("private_scores", "hidden")],
        )
        .await;
        let (_, html) = a.get_text(&path).await;
        assert!(!html.contains("0.9050"));
    }
);

both_backends!(
    gradebook_counts_penalties_late_and_not_gradable,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        set_rules(
            &course,
            &[
                ("due_at", &at(-3600)),
                ("late_policy", "penalty"),
                ("late_penalty_pct", "25"),
                ("late_days", "2"),
                ("points", "10"),
                ("counts", "best"),
            ],
        )
        .await;
        // A student whose display name a spreadsheet would run as a formula.
        let (u, b) = app.logged_in("eve@lab.ac.kr", UserKind::Student).await;
        sqlx::query("UPDATE users SET display_name = '=HYPERLINK(\"http://x\")' WHERE id = $1")
            .bind(&u.id)
            .execute(&app.db.pool)
            .await
            .unwrap();
        sanhak::db::courses::enroll(&app.db, &course.id, &u.id, CourseRole::Student)
            .await
            .unwrap();
        let late = job_of(&submit(&b, &course, RECIPE).await);
        let broken = job_of(&submit(&b, &course, RECIPE).await);
        grade(&app.db, &late, 80.0, 0.8, 0.8).await; // 8 of 10, less 25%: 6
        set_state(&app.db, &broken, "not_gradable").await;

        let (status, html) = course
            .prof
            .get_text(&format!("/courses/{}/gradebook", course.id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains(&format!("<a href=\"/jobs/{late}\">6</a>")),
            "{html}"
        );
        // The not-gradable attempt counts as that, not as a late one.
        assert!(html.contains("1 late (−25%)"), "{html}");
        assert!(html.contains("1 not gradable"));

        let r = course
            .prof
            .get(&format!("/courses/{}/gradebook.csv", course.id))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let csv = r.text().await.unwrap();
        let mut rows = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = rows.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header[2], format!("{LAB} (of 10)"));
        let row: Vec<String> = rows
            .records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(row[0], "'=HYPERLINK(\"http://x\")");
        assert_eq!(&row[2..], ["6", "1", "1", "6"]);

        // Drill-down to every submission.
        let (status, html) = course
            .prof
            .get_text(&format!("/courses/{}/gradebook/{}", course.id, u.id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains(&format!("/jobs/{late}")) && html.contains(&format!("/jobs/{broken}"))
        );
        // Analytics: the score distribution, failures grouped, waits and run times.
        sqlx::query("UPDATE jobs SET message = 'the runner was lost 3 times' WHERE id = $1")
            .bind(&broken)
            .execute(&app.db.pool)
            .await
            .unwrap();
        let (status, html) = course
            .prof
            .get_text(&format!("/courses/{}/analytics", course.id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains("class=\"chart histogram\""),
            "a score histogram"
        );
        assert!(
            html.contains("1×</span> the runner was lost N times"),
            "{html}"
        );
        assert!(html.contains("1 of 1 students graded"));
        assert!(html.contains("Run time"));
        assert_eq!(
            b.get(&format!("/courses/{}/analytics", course.id))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        // Students cannot open the gradebook.
        assert_eq!(
            b.get(&format!("/courses/{}/gradebook", course.id))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            b.get(&format!("/courses/{}/gradebook.csv", course.id))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
    }
);

both_backends!(
    an_instructor_of_another_course_cannot_act_on_this_one,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (me, b) = student(&app, &course, "minji@lab.ac.kr").await;
        let job = job_of(&submit(&b, &course, RECIPE).await);
        // Another instructor, with a course of their own at the same university.
        let (other, ob) = app.logged_in("lee@lab.ac.kr", UserKind::Instructor).await;
        let uni: String = sqlx::query_scalar("SELECT university_id FROM courses WHERE id = $1")
            .bind(&course.id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        sanhak::db::orgs::set_member(&app.db, &uni, &other.id, OrgRole::Member)
            .await
            .unwrap();
        let c = &course.id;
        for path in [
            format!("/courses/{c}/labs/{LAB}"),
            format!("/courses/{c}/labs/{LAB}/settings"),
            format!("/courses/{c}/labs/{LAB}/leaderboard"),
            format!("/courses/{c}/gradebook"),
            format!("/courses/{c}/gradebook.csv"),
            format!("/courses/{c}/gradebook/{}", me.id),
            format!("/courses/{c}/analytics"),
            format!("/jobs/{job}"),
        ] {
            assert_eq!(
                ob.get(&path).await.status(),
                StatusCode::FORBIDDEN,
                "{path}"
            );
        }
        for (path, fields) in [
            (
                format!("/courses/{c}/labs/{LAB}/settings"),
                vec![
                    ("late_policy", "none"),
                    ("counts", "best"),
                    ("private_scores", "released"),
                ],
            ),
            (
                format!("/courses/{c}/labs/{LAB}/extensions"),
                vec![("user_id", me.id.as_str()), ("due_at", "2030-01-01T00:00")],
            ),
            (format!("/jobs/{job}/cancel"), vec![]),
        ] {
            assert_eq!(
                ob.post_form(&path, &fields).await.status(),
                StatusCode::FORBIDDEN,
                "{path}"
            );
        }
        // Nothing changed.
        let (_, html) = b.get_text(&format!("/jobs/{job}")).await;
        assert!(html.contains("state-queued"));
        let ext: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lab_extensions")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(ext, 0);
    }
);

async fn regrade_jobs(db: &Db, regrade_id: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT j.id, s.user_id FROM jobs j JOIN submissions s ON s.id = j.submission_id \
         WHERE s.regrade_id = $1 ORDER BY s.user_id",
    )
    .bind(regrade_id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

both_backends!(
    regrades_keep_old_and_new_side_by_side_until_accepted,
    |app: TestApp| async move {
        let course = course_with_lab(&app).await;
        let (a, ab) = student(&app, &course, "minji@lab.ac.kr").await;
        let (b, bb) = student(&app, &course, "jisoo@lab.ac.kr").await;
        let a1 = job_of(&submit(&ab, &course, RECIPE).await);
        let b1 = job_of(&submit(&bb, &course, RECIPE).await);
        let b2 = job_of(&submit(&bb, &course, RECIPE).await);
        grade(&app.db, &a1, 60.0, 0.6, 0.6).await;
        grade(&app.db, &b1, 40.0, 0.4, 0.4).await;
        grade(&app.db, &b2, 70.0, 0.7, 0.7).await;
        let book = format!("/courses/{}/gradebook.csv", course.id);
        let totals = |csv: String| -> Vec<String> {
            csv::Reader::from_reader(csv.as_bytes())
                .records()
                .map(|r| r.unwrap().iter().next_back().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            totals(course.prof.get(&book).await.text().await.unwrap()),
            ["70", "60"]
        );

        let r = course
            .prof
            .post_form(&format!("/courses/{}/labs/{LAB}/regrades", course.id), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let page = location(&r);
        let regrade_id = page.rsplit('/').next().unwrap().to_owned();
        let jobs = regrade_jobs(&app.db, &regrade_id).await;
        assert_eq!(jobs.len(), 2, "one job per counted submission");
        // The copies are not attempts: history and limits are unchanged.
        let (_, html) = bb
            .get_text(&format!("/courses/{}/labs/{LAB}", course.id))
            .await;
        assert_eq!(element_text(&html, "attempts-left"), "2 used, no limit");
        // A second regrade cannot start while this one runs; it cannot be accepted unfinished.
        let again = course
            .prof
            .post_form(&format!("/courses/{}/labs/{LAB}/regrades", course.id), &[])
            .await;
        assert_eq!(again.status(), StatusCode::CONFLICT);
        let early = course.prof.post_form(&format!("{page}/accept"), &[]).await;
        assert_eq!(early.status(), StatusCode::CONFLICT);
        // The new grades arrive; the old ones still count until accepted.
        for (job, user) in &jobs {
            let points = if *user == a.id { 80.0 } else { 50.0 };
            grade(&app.db, job, points, points / 100.0, points / 100.0).await;
        }
        let (status, html) = course.prof.get_text(&page).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("+20") && html.contains("-20"), "{html}");
        assert_eq!(
            totals(course.prof.get(&book).await.text().await.unwrap()),
            ["70", "60"]
        );
        // Students cannot accept; the instructor does.
        assert_eq!(
            bb.post_form(&format!("{page}/accept"), &[]).await.status(),
            StatusCode::FORBIDDEN
        );
        let r = course.prof.post_form(&format!("{page}/accept"), &[]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            totals(course.prof.get(&book).await.text().await.unwrap()),
            ["50", "80"]
        );
        let _ = b;

        // A later regrade that is discarded changes nothing and stops its jobs.
        let r = course
            .prof
            .post_form(&format!("/courses/{}/labs/{LAB}/regrades", course.id), &[])
            .await;
        let second = location(&r);
        let r = course
            .prof
            .post_form(&format!("{second}/discard"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let id = second.rsplit('/').next().unwrap().to_owned();
        for (job, _) in regrade_jobs(&app.db, &id).await {
            let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                .bind(&job)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            assert_eq!(state, "cancelled");
        }
        assert_eq!(
            totals(course.prof.get(&book).await.text().await.unwrap()),
            ["50", "80"]
        );
        assert_eq!(
            course
                .prof
                .post_form(&format!("{second}/accept"), &[])
                .await
                .status(),
            StatusCode::CONFLICT
        );
    }
);

both_backends!(
    code_labs_get_an_editor_and_errors_against_their_lines,
    |app: TestApp| async move {
        const CODE_LAB: &str = "lora-from-scratch";
        let course = course_with_lab(&app).await;
        let r = course
            .prof
            .post_form(
                &format!("/courses/{}/labs", course.id),
                &[("lab_id", CODE_LAB)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, b) = student(&app, &course, "minji@lab.ac.kr").await;
        let (status, html) = b
            .get_text(&format!("/courses/{}/labs/{CODE_LAB}", course.id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("id=\"code\"") && html.contains("id=\"gutter\""));
        assert!(
            html.contains("impl LoraLayer for LoraLinear"),
            "the starter code"
        );
        assert!(!html.contains("name=\"recipe\""));
        // A recipe for a code lab is refused.
        let r = b
            .post_form(
                &format!("/courses/{}/labs/{CODE_LAB}/submit", course.id),
                &[("recipe", RECIPE)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        // A submission that does not compile: the runner's `compile` event and
        // its failure, as the runner reports them.
        let source =
            "use labkit::prelude::*;\n\npub fn broken() -> u32 {\n    \"not a number\"\n}\n";
        let r = b
            .post_form(
                &format!("/courses/{}/labs/{CODE_LAB}/submit", course.id),
                &[("code", source)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let job = job_of(&r);
        let diag = serde_json::json!({"ok": false, "wall_s": 0.4, "diagnostics": [{
        "level": "error", "code": "E0308", "message": "mismatched types",
        "file": "src/lib.rs", "line": 4, "column": 5, "end_line": 4, "end_column": 19,
        "rendered": "error[E0308]: mismatched types\n --> src/lib.rs:4:5"}]});
        sqlx::query("INSERT INTO job_events (job_id, seq, at_ms, kind, data) VALUES ($1, 0, 1, 'compile', $2)")
        .bind(&job)
        .bind(diag.to_string())
        .execute(&app.db.pool)
        .await
        .unwrap();
        sqlx::query(
        "UPDATE jobs SET state = 'failed', fault = 'submission', message = 'src/lib.rs does not compile: 1 error' WHERE id = $1",
    )
    .bind(&job)
    .execute(&app.db.pool)
    .await
    .unwrap();
        let (status, html) = b.get_text(&format!("/jobs/{job}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<a href=\"#L4\">line 4:5</a>"), "{html}");
        assert!(html.contains("error[E0308]</strong>: mismatched types"));
        assert!(html.contains("id=\"L4\" class=\"line mark-error\""));
        assert!(html.contains("id=\"L3\" class=\"line\""));
        // The editor starts from the last attempt.
        let (_, html) = b
            .get_text(&format!("/courses/{}/labs/{CODE_LAB}", course.id))
            .await;
        assert!(html.contains("pub fn broken()"));
        assert!(!html.contains("impl LoraLayer for LoraLinear"));
    }
);
