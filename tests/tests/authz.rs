//! The authorization matrix: every route × every kind of caller, asserting
//! allowed or denied. Denied means a login redirect (pages) or 401 (API) for
//! visitors, and 403 for signed-in callers. A route that is missing from the
//! matrix fails the test, so the matrix grows with the app.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use sanhak::db::courses;
use sanhak::domain::{CourseRole, OrgKind, OrgRole, UserKind};
use sanhak_tests::{both_backends, location, Api, Browser, TestApp, PASSWORD};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Anonymous,
    Outsider,
    Student,
    Ta,
    Instructor,
    Company,
    Admin,
}

use Who::*;

const EVERYONE: &[Who] = &[Anonymous, Outsider, Student, Ta, Instructor, Company, Admin];
const SIGNED_IN: &[Who] = &[Outsider, Student, Ta, Instructor, Company, Admin];
const MEMBERS: &[Who] = &[Student, Ta, Instructor, Admin];
const STAFF: &[Who] = &[Ta, Instructor, Admin];
const TEACHER: &[Who] = &[Instructor, Admin];
const ADMIN: &[Who] = &[Admin];
const CREATORS: &[Who] = &[Instructor, Admin];
const NOBODY: &[Who] = &[];
const STUDENTS: &[Who] = &[Student];
const PUBLISHERS: &[Who] = &[Instructor, Company, Admin];
const POSTING_SIDE: &[Who] = &[Company, Admin];
const APPLICATION_PARTIES: &[Who] = &[Student, Company, Admin];
// joint projects
const UNI_STUDENTS: &[Who] = &[Outsider, Student, Ta];
const REVIEWERS: &[Who] = &[Instructor, Company, Admin];
const TEAM_MEMBER: &[Who] = &[Ta];
const FACULTY: &[Who] = &[Instructor];
const COMPANY: &[Who] = &[Company];
const DECIDERS: &[Who] = &[Instructor, Company];
const SPACE_VIEWERS: &[Who] = &[Student, Ta, Instructor, Company, Admin];
const PARTICIPANTS: &[Who] = &[Student, Ta, Instructor, Company];

struct Row {
    method: &'static str,
    path: &'static str,
    allowed: &'static [Who],
}

const fn row(method: &'static str, path: &'static str, allowed: &'static [Who]) -> Row {
    Row {
        method,
        path,
        allowed,
    }
}

/// `{course}` is course A (the outsider studies course B); `{org}` is the
/// company the company member belongs to (as a plain member).
const PAGES: &[Row] = &[
    row("GET", "/", EVERYONE),
    row("GET", "/dashboard", SIGNED_IN),
    row("GET", "/signup", EVERYONE),
    row("POST", "/signup", EVERYONE),
    row("GET", "/login", EVERYONE),
    row("POST", "/login", EVERYONE),
    row("POST", "/logout", EVERYONE),
    row("GET", "/invite/{token}", EVERYONE),
    row("POST", "/invite/{token}", EVERYONE),
    row("GET", "/courses/new", CREATORS),
    row("POST", "/courses/new", CREATORS),
    row("GET", "/courses/join", SIGNED_IN),
    row("POST", "/courses/join", SIGNED_IN),
    row("GET", "/courses/{course_id}", MEMBERS),
    row("POST", "/courses/{course_id}/join-code", TEACHER),
    row("GET", "/courses/{course_id}/roster", STAFF),
    row("GET", "/courses/{course_id}/roster.csv", STAFF),
    row("POST", "/courses/{course_id}/roster/tas", TEACHER),
    row(
        "POST",
        "/courses/{course_id}/roster/tas/{user_id}/remove",
        TEACHER,
    ),
    row(
        "POST",
        "/courses/{course_id}/roster/students/{user_id}/remove",
        TEACHER,
    ),
    row("GET", "/orgs/{slug}", SIGNED_IN),
    row("POST", "/orgs/{slug}/members", ADMIN),
    row("POST", "/orgs/{slug}/members/{user_id}/remove", ADMIN),
    row("POST", "/orgs/{slug}/invitations", ADMIN),
    row("GET", "/settings/tokens", SIGNED_IN),
    row("POST", "/settings/tokens", SIGNED_IN),
    row("POST", "/settings/tokens/{token_id}/revoke", SIGNED_IN),
    row("GET", "/admin/users", ADMIN),
    row("POST", "/admin/users", ADMIN),
    row("POST", "/admin/users/{user_id}/kind", ADMIN),
    row("POST", "/admin/users/{user_id}/disabled", ADMIN),
    row("POST", "/admin/invitations", ADMIN),
    row("GET", "/admin/orgs", ADMIN),
    row("POST", "/admin/orgs", ADMIN),
    row("GET", "/healthz", EVERYONE),
    row("GET", "/metrics", EVERYONE),
    row("GET", "/static/{*path}", EVERYONE),
    row("GET", "/api/v1/openapi.json", EVERYONE),
    // Labs of course A (released, no deadline); `{user_id}` is not a student
    // of it, so staff get a 404 where a student is named.
    row("POST", "/courses/{course_id}/labs", TEACHER),
    row("GET", "/courses/{course_id}/labs/{lab_id}", MEMBERS),
    row("POST", "/courses/{course_id}/labs/{lab_id}/submit", MEMBERS),
    row(
        "GET",
        "/courses/{course_id}/labs/{lab_id}/leaderboard",
        MEMBERS,
    ),
    row(
        "GET",
        "/courses/{course_id}/labs/{lab_id}/settings",
        TEACHER,
    ),
    row(
        "POST",
        "/courses/{course_id}/labs/{lab_id}/settings",
        TEACHER,
    ),
    row(
        "POST",
        "/courses/{course_id}/labs/{lab_id}/extensions",
        TEACHER,
    ),
    row(
        "POST",
        "/courses/{course_id}/labs/{lab_id}/extensions/{user_id}/remove",
        TEACHER,
    ),
    // No graded attempts in course A: starting a regrade changes nothing;
    // `{regrade_id}` names none.
    row(
        "POST",
        "/courses/{course_id}/labs/{lab_id}/regrades",
        TEACHER,
    ),
    row(
        "GET",
        "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}",
        STAFF,
    ),
    row(
        "POST",
        "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}/accept",
        TEACHER,
    ),
    row(
        "POST",
        "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}/discard",
        TEACHER,
    ),
    row("POST", "/courses/{course_id}/leaderboard-name", STUDENTS),
    row("GET", "/courses/{course_id}/gradebook", STAFF),
    row("GET", "/courses/{course_id}/gradebook.csv", STAFF),
    row("GET", "/courses/{course_id}/analytics", STAFF),
    row("GET", "/courses/{course_id}/gradebook/{user_id}", STAFF),
    // `{job_id}` is the student's job: its student and the course's staff.
    row("GET", "/jobs/{job_id}", MEMBERS),
    row("GET", "/jobs/{job_id}/stream", MEMBERS),
    row("POST", "/jobs/{job_id}/cancel", MEMBERS),
    // Publishing lab packages: instructors and site admins, and company
    // members (sponsored labs). Previews: instructors, admins and members of
    // the sponsoring company (the lab here has no sponsor).
    row("GET", "/labs/publish", PUBLISHERS),
    row("POST", "/labs/publish", PUBLISHERS),
    row("GET", "/labs/{lab_id}/preview", CREATORS),
    // Industry. `{posting_id}` is an open internship of the company (where
    // the company member is a plain member) for the university's students
    // (the instructor is a plain member of the university, not its admin);
    // `{application_id}` is the student's application to it.
    row("POST", "/orgs/{slug}/connections", ADMIN),
    row("POST", "/orgs/{slug}/connections/{company_id}", ADMIN),
    row("GET", "/orgs/{slug}/postings/new", POSTING_SIDE),
    row("POST", "/orgs/{slug}/postings/new", POSTING_SIDE),
    row("GET", "/postings", SIGNED_IN),
    row("GET", "/postings/{posting_id}", SIGNED_IN),
    row("GET", "/postings/{posting_id}/edit", POSTING_SIDE),
    row("POST", "/postings/{posting_id}/edit", POSTING_SIDE),
    row("POST", "/postings/{posting_id}/submit", POSTING_SIDE),
    row("POST", "/postings/{posting_id}/approve", ADMIN),
    row("POST", "/postings/{posting_id}/request-changes", ADMIN),
    row("POST", "/postings/{posting_id}/open", POSTING_SIDE),
    row("POST", "/postings/{posting_id}/apply", SIGNED_IN),
    row("GET", "/applications", SIGNED_IN),
    row("GET", "/applications/{application_id}", APPLICATION_PARTIES),
    row(
        "POST",
        "/applications/{application_id}/move",
        APPLICATION_PARTIES,
    ),
    row("POST", "/applications/{application_id}/notes", POSTING_SIDE),
    row(
        "GET",
        "/applications/{application_id}/cv",
        APPLICATION_PARTIES,
    ),
    row("GET", "/notifications", SIGNED_IN),
    row("POST", "/notifications/read-all", SIGNED_IN),
    row("POST", "/notifications/{notification_id}/open", SIGNED_IN),
    // Last: closing changes the posting for good.
    row("POST", "/postings/{posting_id}/close", POSTING_SIDE),
    // joint projects: here `{posting_id}` is an open project of the university
    // (every student account studies there: Outsider, Student and the TA);
    // `{team_id}` is formed, led by Student with the TA as a member, approved
    // by the company member and advised by the instructor. Moves of a formed
    // team are refused (409) for those allowed to make them.
    row("GET", "/postings/{posting_id}/interest", UNI_STUDENTS),
    row("POST", "/postings/{posting_id}/interest", UNI_STUDENTS),
    row("GET", "/postings/{posting_id}/teams", REVIEWERS),
    row("POST", "/teams/{team_id}/accept", TEAM_MEMBER),
    row("POST", "/teams/{team_id}/decline-invitation", TEAM_MEMBER),
    row("POST", "/teams/{team_id}/withdraw", STUDENTS),
    row("POST", "/teams/{team_id}/endorse", FACULTY),
    row("POST", "/teams/{team_id}/approve-company", COMPANY),
    row("POST", "/teams/{team_id}/approve-advisor", FACULTY),
    row("POST", "/teams/{team_id}/decline", DECIDERS),
    row("GET", "/projects/{team_id}", SPACE_VIEWERS),
    row("POST", "/projects/{team_id}/messages", PARTICIPANTS),
    row("POST", "/projects/{team_id}/milestones", PARTICIPANTS),
    row(
        "POST",
        "/projects/{team_id}/milestones/{milestone_id}/status",
        PARTICIPANTS,
    ),
    row("POST", "/projects/{team_id}/files", PARTICIPANTS),
    row("GET", "/projects/{team_id}/files/{file_id}", SPACE_VIEWERS),
    // GPU budgets: course staff see their course's, org admins their
    // organisation's (the company member is a plain member), site admins
    // every one; only site admins grant and adjust vouchers. An empty cap
    // form removes the (absent) cap; `{voucher_id}` and `{project_id}` name none.
    row("GET", "/courses/{course_id}/budget", STAFF),
    row("GET", "/courses/{course_id}/budget.csv", STAFF),
    row("POST", "/courses/{course_id}/budget/cap", TEACHER),
    row("GET", "/orgs/{slug}/budget", ADMIN),
    row("GET", "/orgs/{slug}/budget.csv", ADMIN),
    row("GET", "/admin/vouchers", ADMIN),
    row("POST", "/admin/vouchers", ADMIN),
    row("POST", "/admin/vouchers/{voucher_id}/adjust", ADMIN),
    row("GET", "/admin/vouchers/projects/{project_id}", ADMIN),
    row(
        "GET",
        "/admin/vouchers/projects/{project_id}/ledger.csv",
        ADMIN,
    ),
];

const API: &[Row] = &[
    row("GET", "/api/v1/me", SIGNED_IN),
    row("GET", "/api/v1/courses", SIGNED_IN),
    row("POST", "/api/v1/courses", CREATORS),
    row("POST", "/api/v1/courses/join", SIGNED_IN),
    row("GET", "/api/v1/courses/{course_id}", MEMBERS),
    row("POST", "/api/v1/courses/{course_id}/join-code", TEACHER),
    row("GET", "/api/v1/courses/{course_id}/roster", STAFF),
    row("POST", "/api/v1/courses/{course_id}/roster/tas", TEACHER),
    row(
        "DELETE",
        "/api/v1/courses/{course_id}/roster/{user_id}",
        TEACHER,
    ),
    row("GET", "/api/v1/courses/{course_id}/labs", MEMBERS),
    row("PUT", "/api/v1/courses/{course_id}/labs/{lab_id}", TEACHER),
    row(
        "POST",
        "/api/v1/courses/{course_id}/labs/{lab_id}/submissions",
        MEMBERS,
    ),
    // `{job_id}` is the student's job: its student and the course's staff.
    row("GET", "/api/v1/jobs/{job_id}", MEMBERS),
    row("GET", "/api/v1/jobs/{job_id}/events", MEMBERS),
    row("POST", "/api/v1/jobs/{job_id}/cancel", MEMBERS),
    row("POST", "/api/v1/labs", CREATORS),
    row("GET", "/api/v1/labs/{lab_id}/versions/{version}", CREATORS),
    // The runner protocol takes runner tokens only: no person gets in.
    row("POST", "/api/runner/v1/register", NOBODY),
    row("POST", "/api/runner/v1/claim", NOBODY),
    row("POST", "/api/runner/v1/jobs/{job_id}/heartbeat", NOBODY),
    row("POST", "/api/runner/v1/jobs/{job_id}/events", NOBODY),
    row("POST", "/api/runner/v1/jobs/{job_id}/complete", NOBODY),
    row("POST", "/api/runner/v1/jobs/{job_id}/fail", NOBODY),
    row("GET", "/api/runner/v1/labs/{lab_id}", NOBODY),
    row("GET", "/api/runner/v1/labs/{lab_id}/files/{sha256}", NOBODY),
];

struct World {
    course_a: String,
    project_id: String,
    team_id: String,
    job_id: String,
    company_slug: String,
    company_id: String,
    posting_id: String,
    application_id: String,
    bystander_id: String,
    browsers: Vec<(Who, Browser)>,
    tokens: Vec<(Who, Option<String>)>,
    emails: Vec<(Who, String)>,
}

async fn world(app: &TestApp) -> World {
    let uni = app.create_org("matrix-univ", OrgKind::University).await;
    let company = app.create_org("matrix-co", OrgKind::Company).await;
    let mut emails = Vec::new();
    let mut ids = Vec::new();
    for (who, kind) in [
        (Outsider, UserKind::Student),
        (Student, UserKind::Student),
        (Ta, UserKind::Student),
        (Instructor, UserKind::Instructor),
        (Company, UserKind::Company),
        (Admin, UserKind::Admin),
    ] {
        let email = format!("{who:?}@matrix.ac.kr").to_lowercase();
        let user = app.create_user(&email, kind).await;
        emails.push((who, email));
        ids.push((who, user.id));
    }
    let id = |w: Who| {
        ids.iter()
            .find(|(x, _)| *x == w)
            .map(|(_, id)| id.clone())
            .unwrap()
    };
    sanhak::db::orgs::set_member(&app.db, &uni.id, &id(Instructor), OrgRole::Member)
        .await
        .unwrap();
    sanhak::db::orgs::set_member(&app.db, &company.id, &id(Company), OrgRole::Member)
        .await
        .unwrap();
    let code = |c: &str| sanhak::domain::CourseCode::parse(c).unwrap();
    let (a, b) = (code("MAT1"), code("MAT2"));
    let course_a = courses::create(
        &app.db,
        courses::NewCourse {
            code: &a,
            title: "A",
            term: "t",
            university_id: &uni.id,
            description: "",
            instructor_id: &id(Instructor),
        },
    )
    .await
    .unwrap();
    let course_b = courses::create(
        &app.db,
        courses::NewCourse {
            code: &b,
            title: "B",
            term: "t",
            university_id: &uni.id,
            description: "",
            instructor_id: &id(Instructor),
        },
    )
    .await
    .unwrap();
    courses::enroll(&app.db, &course_a, &id(Student), CourseRole::Student)
        .await
        .unwrap();
    courses::enroll(&app.db, &course_a, &id(Ta), CourseRole::Ta)
        .await
        .unwrap();
    courses::enroll(&app.db, &course_b, &id(Outsider), CourseRole::Student)
        .await
        .unwrap();
    let bystander = app
        .create_user("bystander@matrix.ac.kr", UserKind::Student)
        .await;
    sanhak::db::labs::add(&app.db, &course_a, LAB, None)
        .await
        .unwrap();
    let entry = app
        .state
        .queue
        .catalog
        .get(LAB)
        .expect("lab in the catalog");
    let (_, job_id) = sanhak::db::jobs::submit(
        &app.db,
        &sanhak::db::jobs::NewSubmission {
            course_id: &course_a,
            lab_id: LAB,
            lab_version: &entry.package.version,
            lab_hash: &entry.package.hash,
            user_id: &id(Student),
            kind: sanhak_runner::protocol::SubmissionKind::Recipe,
            content: "",
            resources: entry.resources(),
            step_scale: 1.0,
            due_at_ms: None,
            late_seconds: 0,
            penalty_pct: 0.0,
            limits: sanhak::db::jobs::AttemptLimits::default(),
            regrade: None,
        },
        &app.state.queue.policy,
    )
    .await
    .unwrap()
    .unwrap();

    // An open internship of the company for the university's students, and
    // the student's application to it.
    use sanhak::domain::{ConnectionState, PostingKind, PostingState};
    sanhak::db::orgs::request_connection(&app.db, &company.id, &uni.id, "", &id(Company))
        .await
        .unwrap();
    sanhak::db::orgs::decide_connection(
        &app.db,
        &company.id,
        &uni.id,
        ConnectionState::Approved,
        &id(Admin),
    )
    .await
    .unwrap();
    let posting_id = sanhak::db::postings::create(
        &app.db,
        PostingKind::Internship,
        &company.id,
        &uni.id,
        &sanhak::db::postings::PostingFields {
            title: "Matrix internship".into(),
            body: "b".into(),
            role: "intern".into(),
            skills: ",".into(),
            ..Default::default()
        },
        &id(Company),
    )
    .await
    .unwrap();
    for (from, to) in [
        (PostingState::Draft, PostingState::Submitted),
        (PostingState::Submitted, PostingState::Approved),
        (PostingState::Approved, PostingState::Open),
    ] {
        assert!(sanhak::db::postings::transition(
            &app.db,
            &posting_id,
            &[from],
            to,
            &id(Admin),
            ""
        )
        .await
        .unwrap());
    }
    let application_id = sanhak::db::applications::apply(
        &app.db,
        &posting_id,
        &id(Student),
        "statement",
        None,
        || async { Ok(()) },
    )
    .await
    .unwrap()
    .unwrap();
    let (project_id, team_id) = joint_project(app, &uni.id, &company.id, &id).await;

    let mut browsers = vec![(Anonymous, app.browser())];
    let mut tokens = vec![(Anonymous, None)];
    for (who, email) in &emails {
        let b = app.browser();
        assert_eq!(
            b.login(email, PASSWORD).await.status(),
            StatusCode::SEE_OTHER
        );
        let user_id = id(*who);
        tokens.push((
            *who,
            Some(
                sanhak::db::tokens::create(&app.db, &user_id, "matrix")
                    .await
                    .unwrap(),
            ),
        ));
        browsers.push((*who, b));
    }
    World {
        course_a,
        project_id,
        team_id,
        job_id,
        company_slug: company.slug,
        company_id: company.id,
        posting_id,
        application_id,
        bystander_id: bystander.id,
        browsers,
        tokens,
        emails,
    }
}

/// An open joint project of `uni` by `company`, and a formed team on it:
/// Student leads, the TA is a member, the company member approved it and
/// the instructor advises it.
async fn joint_project(
    app: &TestApp,
    uni: &str,
    company: &str,
    id: &impl Fn(Who) -> String,
) -> (String, String) {
    use sanhak::db::{postings, projects};
    use sanhak::domain::{PostingKind, PostingState};
    let fields = postings::PostingFields {
        title: "Matrix project".into(),
        ..postings::PostingFields::default()
    };
    let posting = postings::create(
        &app.db,
        PostingKind::Project,
        company,
        uni,
        &fields,
        &id(Company),
    )
    .await
    .unwrap();
    for (from, to) in [
        (PostingState::Draft, PostingState::Submitted),
        (PostingState::Submitted, PostingState::Approved),
        (PostingState::Approved, PostingState::Open),
    ] {
        assert!(
            postings::transition(&app.db, &posting, &[from], to, &id(Admin), "")
                .await
                .unwrap()
        );
    }
    let team = projects::express_interest(
        &app.db,
        &projects::NewTeam {
            posting_id: &posting,
            lead_id: &id(Student),
            name: "Matrix team",
            statement: "We can.",
            member_ids: &[id(Ta)],
            nda_ack: false,
        },
    )
    .await
    .unwrap();
    projects::answer_invitation(&app.db, &team, &id(Ta), true, false)
        .await
        .unwrap();
    projects::approve(
        &app.db,
        &team,
        projects::TeamAction::ApproveCompany,
        &id(Company),
    )
    .await
    .unwrap();
    projects::approve(
        &app.db,
        &team,
        projects::TeamAction::ApproveAdvisor,
        &id(Instructor),
    )
    .await
    .unwrap();
    (posting, team)
}

const LAB: &str = "fashion-transfer";

fn concrete(path: &str, w: &World) -> String {
    // The joint-project rows name the open project, the others the internship.
    let path = if path.ends_with("/interest") || path.ends_with("/teams") {
        path.replace("{posting_id}", &w.project_id)
    } else {
        path.to_owned()
    };
    path.replace("{course_id}", &w.course_a)
        .replace("{job_id}", &w.job_id)
        .replace("{lab_id}", LAB)
        .replace("{version}", "1.0.0")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{slug}", &w.company_slug)
        .replace("{company_id}", &w.company_id)
        .replace("{posting_id}", &w.posting_id)
        .replace("{application_id}", &w.application_id)
        .replace("{notification_id}", "no-such-notification")
        .replace("{user_id}", &w.bystander_id)
        .replace("{token}", "inv_0000")
        .replace("{token_id}", "no-such-token")
        .replace("{regrade_id}", "no-such-regrade")
        .replace("{voucher_id}", "no-such-voucher")
        .replace("{project_id}", "no-such-project")
        .replace("{*path}", "style.css")
        .replace("{team_id}", &w.team_id)
        .replace("{milestone_id}", "no-such-milestone")
        .replace("{file_id}", "no-such-file")
}

/// Harmless bodies: they exercise the handler without changing what later rows rely on.
fn form_for(path: &str) -> Vec<(&'static str, &'static str)> {
    if path.ends_with("/kind") {
        vec![("kind", "student")]
    } else if path.ends_with("/disabled") {
        vec![("disabled", "0")]
    } else if path == "/admin/invitations" {
        vec![("kind", "instructor")]
    } else {
        Vec::new()
    }
}

fn page_denied(who: Who, status: StatusCode, location: &str) -> bool {
    match who {
        Anonymous => status == StatusCode::SEE_OTHER && location.starts_with("/login"),
        _ => status == StatusCode::FORBIDDEN,
    }
}

both_backends!(authorization_matrix, |app: TestApp| async move {
    let w = world(&app).await;
    let mut failures = Vec::new();
    for r in PAGES {
        for (who, b) in &w.browsers {
            let path = concrete(r.path, &w);
            let resp = match r.method {
                "GET" => b.get(&path).await,
                _ => b.post_form(&path, &form_for(r.path)).await,
            };
            let (status, loc) = (resp.status(), location(&resp));
            let allowed = r.allowed.contains(who);
            let denied = page_denied(*who, status, &loc);
            if allowed == denied || status.is_server_error() {
                failures.push(format!(
                    "{} {} as {who:?}: {status} {loc} (expected {})",
                    r.method,
                    r.path,
                    if allowed { "allowed" } else { "denied" }
                ));
            }
            if r.path == "/logout" && *who != Anonymous {
                let email = &w.emails.iter().find(|(x, _)| x == who).unwrap().1;
                assert_eq!(
                    b.login(email, PASSWORD).await.status(),
                    StatusCode::SEE_OTHER
                );
            }
        }
    }
    for r in API {
        for (who, token) in &w.tokens {
            let api = Api::new(&app, token.clone());
            let path = concrete(r.path, &w);
            let method = Method::from_bytes(r.method.as_bytes()).unwrap();
            let mut req = api.request(method.clone(), &path);
            if method == Method::POST || method == Method::PUT {
                req = req.json(&serde_json::json!({}));
            }
            let status = req.send().await.unwrap().status();
            let allowed = r.allowed.contains(who);
            let denied = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
            if allowed == denied || status.is_server_error() {
                failures.push(format!(
                    "{} {} as {who:?}: {status} (expected {})",
                    r.method,
                    r.path,
                    if allowed { "allowed" } else { "denied" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "authorization matrix failures:\n{}",
        failures.join("\n")
    );

    // Completeness: every route the app registers is in the matrix.
    let router_source = include_str!("../../app/src/web/mod.rs");
    let mut registered = BTreeSet::new();
    for chunk in router_source.split(".route(\"").skip(1) {
        let path: String = chunk.chars().take_while(|c| *c != '"').collect();
        registered.insert(path);
    }
    for api_source in [
        include_str!("../../app/src/web/api/courses.rs"),
        include_str!("../../app/src/web/api/jobs.rs"),
        include_str!("../../app/src/web/api/publish.rs"),
    ] {
        for chunk in api_source.split("path = \"").skip(1) {
            registered.insert(chunk.chars().take_while(|c| *c != '"').collect());
        }
    }
    let runner_source = include_str!("../../app/src/web/api/runner.rs");
    for chunk in runner_source.split("format!(\"{API_PREFIX}").skip(1) {
        let rest: String = chunk.chars().take_while(|c| *c != '"').collect();
        registered.insert(format!(
            "/api/runner/v1{}",
            rest.replace("{{", "{").replace("}}", "}")
        ));
    }
    let in_matrix: BTreeSet<String> = PAGES.iter().chain(API).map(|r| r.path.to_owned()).collect();
    let missing: Vec<_> = registered.difference(&in_matrix).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the authorization matrix: {missing:?}"
    );
});
