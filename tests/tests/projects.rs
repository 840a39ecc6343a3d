//! Joint projects after posting, on both backends: teams expressing
//! interest, faculty endorsements, the company's and the advisor's
//! approvals (every allowed move, and every disallowed one refused with a
//! clear error and nothing changed), who may see a project space, and the
//! space itself: messages, milestones and checked file uploads.

use reqwest::StatusCode;
use sanhak::db::postings::{self, PostingFields};
use sanhak::db::projects::{self, TeamAction, TeamState};
use sanhak::db::{courses, orgs, Db};
use sanhak::domain::{CourseRole, OrgKind, OrgRole, PostingKind, PostingState, UserKind};
use sanhak_tests::{both_backends, location, Browser, TestApp};

struct Person {
    id: String,
    email: String,
    b: Browser,
}

struct World {
    posting_id: String,
    /// A member of the posting's company.
    company: Person,
    /// The posting's mentor (a company account that is not an org member).
    mentor: Person,
    /// Faculty of the posting's university (an org member).
    prof: Person,
    /// An instructor of another university.
    other_prof: Person,
    /// A member of another company.
    other_company: Person,
    admin: Person,
    course_id: String,
    uni_id: String,
}

async fn person(app: &TestApp, email: &str, kind: UserKind) -> Person {
    let (u, b) = app.logged_in(email, kind).await;
    Person {
        id: u.id,
        email: email.to_owned(),
        b,
    }
}

/// A student of the world's university (enrolled in its course).
async fn student(app: &TestApp, w: &World, email: &str) -> Person {
    let p = person(app, email, UserKind::Student).await;
    courses::enroll(&app.db, &w.course_id, &p.id, CourseRole::Student)
        .await
        .unwrap();
    p
}

async fn open_project(
    app: &TestApp,
    company_id: &str,
    uni_id: &str,
    by: &str,
    fields: &PostingFields,
) -> String {
    let id = postings::create(
        &app.db,
        PostingKind::Project,
        company_id,
        uni_id,
        fields,
        by,
    )
    .await
    .unwrap();
    for (from, to) in [
        (PostingState::Draft, PostingState::Submitted),
        (PostingState::Submitted, PostingState::Approved),
        (PostingState::Approved, PostingState::Open),
    ] {
        assert!(postings::transition(&app.db, &id, &[from], to, by, "")
            .await
            .unwrap());
    }
    id
}

async fn world(app: &TestApp, nda: bool) -> World {
    let uni = app.create_org("proj-univ", OrgKind::University).await;
    let other_uni = app.create_org("far-univ", OrgKind::University).await;
    let co = app.create_org("proj-co", OrgKind::Company).await;
    let other_co = app.create_org("rival-co", OrgKind::Company).await;
    let company = person(app, "eng@proj-co.example", UserKind::Company).await;
    orgs::set_member(&app.db, &co.id, &company.id, OrgRole::Member)
        .await
        .unwrap();
    let mentor = person(app, "mentor@proj-co.example", UserKind::Company).await;
    let prof = person(app, "prof@proj-univ.ac.kr", UserKind::Instructor).await;
    orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Member)
        .await
        .unwrap();
    let other_prof = person(app, "prof@far-univ.ac.kr", UserKind::Instructor).await;
    orgs::set_member(&app.db, &other_uni.id, &other_prof.id, OrgRole::Member)
        .await
        .unwrap();
    let other_company = person(app, "eng@rival-co.example", UserKind::Company).await;
    orgs::set_member(&app.db, &other_co.id, &other_company.id, OrgRole::Admin)
        .await
        .unwrap();
    let admin = person(app, "root@sanhak.test", UserKind::Admin).await;
    let code = sanhak::domain::CourseCode::parse("PRJ1").unwrap();
    let course_id = courses::create(
        &app.db,
        courses::NewCourse {
            code: &code,
            title: "Projects",
            term: "t",
            university_id: &uni.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await
    .unwrap();
    let fields = PostingFields {
        title: "Defect detection on the line".into(),
        body: "Find **scratches** on panels.<script>alert(1)</script>".into(),
        dataset: "12,000 labelled panel photos".into(),
        duration_weeks: Some(12),
        team_size: Some(3),
        mentor_id: Some(mentor.id.clone()),
        nda_required: nda,
        ..PostingFields::default()
    };
    let posting_id = open_project(app, &co.id, &uni.id, &company.id, &fields).await;
    World {
        posting_id,
        company,
        mentor,
        prof,
        other_prof,
        other_company,
        admin,
        course_id,
        uni_id: uni.id,
    }
}

/// Everything a move could change about a team.
async fn snapshot(db: &Db, team_id: &str) -> String {
    let team = projects::get(db, team_id).await.unwrap().unwrap();
    let members: Vec<String> = projects::members(db, team_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| format!("{}:{}:{}", m.email, m.status, m.nda_ack_at.is_some()))
        .collect();
    let events = projects::events(db, team_id).await.unwrap().len();
    let endorsements = projects::endorsements(db, team_id).await.unwrap().len();
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM project_team_members WHERE team_id = $1 AND active = 1",
    )
    .bind(team_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    format!(
        "{} {:?} {:?} {:?} {members:?} events={events} endorsements={endorsements} live={live}",
        team.state, team.company_approved_by, team.advisor_id, team.formed_at
    )
}

async fn notifications_of(db: &Db, user_id: &str) -> Vec<(String, String)> {
    sanhak::db::notifications::recent(db, user_id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.message, n.link))
        .collect()
}

async fn teams_count(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM project_teams")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn express(b: &Browser, posting_id: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    b.post_form(&format!("/postings/{posting_id}/interest"), fields)
        .await
}

/// The lead's only team on the posting.
async fn team_of(db: &Db, posting_id: &str, lead: &Person) -> String {
    let teams = projects::of_posting_for(db, posting_id, &lead.id)
        .await
        .unwrap();
    teams
        .into_iter()
        .find(|t| t.lead_id == lead.id)
        .expect("the lead's team")
        .id
}

both_backends!(
    a_team_forms_through_interest_endorsement_and_both_approvals,
    |app: TestApp| async move {
        let w = world(&app, true).await;
        let lead = student(&app, &w, "lead@proj-univ.ac.kr").await;
        let jin = student(&app, &w, "jin@proj-univ.ac.kr").await;
        let ara = student(&app, &w, "ara@proj-univ.ac.kr").await;
        let bystander = student(&app, &w, "by@proj-univ.ac.kr").await;

        // The interest page shows the posting with its NDA notice, sanitised.
        let (status, html) = lead
            .b
            .get_text(&format!("/postings/{}/interest", w.posting_id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<strong>scratches</strong>"), "{html}");
        assert!(
            !html.contains("<script>alert"),
            "the statement is sanitised"
        );
        assert!(html.contains("id=\"nda-notice\""));
        assert!(html.contains("12,000 labelled panel photos"));

        // Without acknowledging the NDA notice, nothing is stored.
        let members = format!("{}, {}", jin.email, ara.email);
        let r = express(
            &lead.b,
            &w.posting_id,
            &[
                ("name", "Team Haneul"),
                ("statement", "We *love* vision."),
                ("members", &members),
            ],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("confirm that you have read the NDA notice"));
        assert_eq!(teams_count(&app.db).await, 0);

        let r = express(
            &lead.b,
            &w.posting_id,
            &[
                ("name", "Team Haneul"),
                ("statement", "We *love* vision."),
                ("members", &members),
                ("nda_ack", "1"),
            ],
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "{}",
            r.text().await.unwrap_or_default()
        );
        let team_id = team_of(&app.db, &w.posting_id, &lead).await;
        let team = projects::get(&app.db, &team_id).await.unwrap().unwrap();
        assert_eq!(team.state, TeamState::Interested);

        // The company, the mentor and the chosen members are told.
        for p in [&w.company, &w.mentor] {
            let n = notifications_of(&app.db, &p.id).await;
            assert!(
                n.iter().any(|(m, l)| m.contains("Team Haneul")
                    && *l == format!("/postings/{}/teams", w.posting_id)),
                "{n:?}"
            );
        }
        let n = notifications_of(&app.db, &jin.id).await;
        assert!(n.iter().any(|(m, _)| m.contains("please confirm")), "{n:?}");

        // The company cannot approve while chosen members have not answered.
        let before = snapshot(&app.db, &team_id).await;
        let r = w
            .company
            .b
            .post_form(&format!("/teams/{team_id}/approve-company"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("Some chosen members have not answered yet"));
        assert_eq!(snapshot(&app.db, &team_id).await, before);

        // A student who was not chosen cannot answer for the team.
        let r = bystander
            .b
            .post_form(&format!("/teams/{team_id}/accept"), &[("nda_ack", "1")])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);

        // Members confirm (acknowledging the NDA notice); answering twice is refused.
        let r = jin
            .b
            .post_form(&format!("/teams/{team_id}/accept"), &[])
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CONFLICT,
            "the NDA notice must be acknowledged"
        );
        let r = jin
            .b
            .post_form(&format!("/teams/{team_id}/accept"), &[("nda_ack", "1")])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = ara
            .b
            .post_form(&format!("/teams/{team_id}/accept"), &[("nda_ack", "1")])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let before = snapshot(&app.db, &team_id).await;
        let r = ara
            .b
            .post_form(&format!("/teams/{team_id}/decline-invitation"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.text().await.unwrap().contains("already answered"));
        assert_eq!(snapshot(&app.db, &team_id).await, before);
        let n = notifications_of(&app.db, &lead.id).await;
        assert!(n.iter().any(|(m, _)| m.contains("joined team")), "{n:?}");

        // Faculty of another university cannot endorse or approve; students
        // and other companies cannot see the teams.
        for path in ["endorse", "approve-advisor"] {
            let r = w
                .other_prof
                .b
                .post_form(&format!("/teams/{team_id}/{path}"), &[])
                .await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        }
        let r = w
            .other_company
            .b
            .post_form(&format!("/teams/{team_id}/approve-company"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        for b in [&bystander.b, &w.other_company.b, &w.other_prof.b] {
            let r = b.get(&format!("/postings/{}/teams", w.posting_id)).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        assert_eq!(snapshot(&app.db, &team_id).await, before);

        // The university's faculty endorses; the company sees it.
        let r = w
            .prof
            .b
            .post_form(
                &format!("/teams/{team_id}/endorse"),
                &[("note", "Top of my class")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (status, html) = w
            .company
            .b
            .get_text(&format!("/postings/{}/teams", w.posting_id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("Top of my class"), "{html}");
        assert!(html.contains("data-state=\"endorsed\""));
        let n = notifications_of(&app.db, &w.company.id).await;
        assert!(n.iter().any(|(m, _)| m.contains("endorsed")), "{n:?}");

        // The company approves; the advisor's approval forms the team.
        let r = w
            .company
            .b
            .post_form(&format!("/teams/{team_id}/approve-company"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            projects::get(&app.db, &team_id)
                .await
                .unwrap()
                .unwrap()
                .state,
            TeamState::CompanyApproved
        );
        let (status, _) = lead.b.get_text(&format!("/projects/{team_id}")).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "no space before the team is formed"
        );
        let r = w
            .prof
            .b
            .post_form(&format!("/teams/{team_id}/approve-advisor"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let team = projects::get(&app.db, &team_id).await.unwrap().unwrap();
        assert_eq!(team.state, TeamState::Formed);
        assert_eq!(team.advisor_id.as_deref(), Some(w.prof.id.as_str()));
        assert_eq!(
            team.company_approved_by.as_deref(),
            Some(w.company.id.as_str())
        );
        for p in [&lead, &jin, &ara, &w.mentor, &w.company, &w.prof] {
            let n = notifications_of(&app.db, &p.id).await;
            assert!(
                n.iter()
                    .any(|(m, l)| m.contains("is formed") && *l == format!("/projects/{team_id}")),
                "{}: {n:?}",
                p.email
            );
        }
        let events: Vec<TeamState> = projects::events(&app.db, &team_id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.to_state)
            .collect();
        assert_eq!(
            events,
            [
                TeamState::Interested,
                TeamState::Endorsed,
                TeamState::CompanyApproved,
                TeamState::Formed
            ]
        );

        // The space: the team, the mentor, the company, the advisor and site
        // admins see it; nobody else does.
        for p in [&lead, &jin, &ara, &w.mentor, &w.company, &w.prof, &w.admin] {
            let (status, html) = p.b.get_text(&format!("/projects/{team_id}")).await;
            assert_eq!(status, StatusCode::OK, "{}", p.email);
            assert!(html.contains("Defect detection on the line"));
            assert!(html.contains("id=\"nda-notice\""));
        }
        for p in [&bystander, &w.other_company, &w.other_prof] {
            let r = p.b.get(&format!("/projects/{team_id}")).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", p.email);
        }
        let r = app.browser().get(&format!("/projects/{team_id}")).await;
        assert!(location(&r).starts_with("/login"));

        // Once formed, nothing more moves.
        let before = snapshot(&app.db, &team_id).await;
        for (b, path) in [
            (&lead.b, "withdraw"),
            (&w.company.b, "decline"),
            (&w.company.b, "approve-company"),
            (&w.prof.b, "approve-advisor"),
            (&w.prof.b, "endorse"),
        ] {
            let r = b.post_form(&format!("/teams/{team_id}/{path}"), &[]).await;
            assert_eq!(r.status(), StatusCode::CONFLICT, "{path}");
            assert!(r.text().await.unwrap().contains("already formed"), "{path}");
        }
        assert_eq!(snapshot(&app.db, &team_id).await, before);
    }
);

/// Who makes each move in the state-machine test, and its route.
fn mv(w: &World, action: TeamAction) -> (&Browser, &'static str) {
    match action {
        TeamAction::Endorse => (&w.prof.b, "endorse"),
        TeamAction::ApproveCompany => (&w.company.b, "approve-company"),
        TeamAction::ApproveAdvisor => (&w.prof.b, "approve-advisor"),
        TeamAction::Decline => (&w.company.b, "decline"),
        TeamAction::Withdraw => (&w.company.b, "withdraw"),
    }
}

/// A fresh team of `lead` (alone) on the posting, in `Interested`.
async fn lone_team(app: &TestApp, w: &World, email: &str) -> (Person, String) {
    let lead = student(app, w, email).await;
    let r = express(
        &lead.b,
        &w.posting_id,
        &[("name", email), ("statement", "Us.")],
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let id = team_of(&app.db, &w.posting_id, &lead).await;
    (lead, id)
}

both_backends!(every_move_of_the_state_machine, |app: TestApp| async move {
    let w = world(&app, false).await;
    // Paths that reach each state from a fresh team, by the moves named.
    let paths: &[(&[TeamAction], TeamState)] = &[
        (&[], TeamState::Interested),
        (&[TeamAction::Endorse], TeamState::Endorsed),
        (&[TeamAction::ApproveCompany], TeamState::CompanyApproved),
        (&[TeamAction::ApproveAdvisor], TeamState::AdvisorApproved),
        (
            &[TeamAction::Endorse, TeamAction::ApproveCompany],
            TeamState::CompanyApproved,
        ),
        (
            &[TeamAction::Endorse, TeamAction::ApproveAdvisor],
            TeamState::AdvisorApproved,
        ),
        (
            &[TeamAction::ApproveCompany, TeamAction::ApproveAdvisor],
            TeamState::Formed,
        ),
        (
            &[TeamAction::ApproveAdvisor, TeamAction::ApproveCompany],
            TeamState::Formed,
        ),
        (&[TeamAction::Decline], TeamState::Declined),
    ];
    let all = [
        TeamAction::Endorse,
        TeamAction::ApproveCompany,
        TeamAction::ApproveAdvisor,
        TeamAction::Decline,
        TeamAction::Withdraw,
    ];
    let mut n = 0;
    for (path, reached) in paths {
        for action in all {
            n += 1;
            let (lead, team_id) = lone_team(&app, &w, &format!("s{n}@proj-univ.ac.kr")).await;
            for step in *path {
                let (b, p) = mv(&w, *step);
                let r = b.post_form(&format!("/teams/{team_id}/{p}"), &[]).await;
                assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path:?}");
            }
            let team = projects::get(&app.db, &team_id).await.unwrap().unwrap();
            assert_eq!(team.state, *reached, "{path:?}");
            let before = snapshot(&app.db, &team_id).await;
            let (b, p) = match action {
                TeamAction::Withdraw => (&lead.b, "withdraw"),
                other => mv(&w, other),
            };
            let r = b.post_form(&format!("/teams/{team_id}/{p}"), &[]).await;
            // The same faculty member endorses a team only once.
            let expected = if action == TeamAction::Endorse && path.contains(&TeamAction::Endorse) {
                Err("already_endorsed")
            } else {
                reached.after(action)
            };
            let after = projects::get(&app.db, &team_id).await.unwrap().unwrap();
            match expected {
                Ok(to) => {
                    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{reached} {action:?}");
                    assert_eq!(after.state, to, "{reached} {action:?}");
                    let last = projects::events(&app.db, &team_id)
                        .await
                        .unwrap()
                        .pop()
                        .unwrap();
                    assert_eq!(last.to_state, to);
                }
                Err(key) => {
                    assert_eq!(r.status(), StatusCode::CONFLICT, "{reached} {action:?}");
                    let html = r.text().await.unwrap();
                    assert!(
                        !html.contains(key),
                        "the page says it in words, not as a key: {html}"
                    );
                    assert_eq!(
                        snapshot(&app.db, &team_id).await,
                        before,
                        "{reached} {action:?}"
                    );
                }
            }
            // A withdrawn or declined team frees its lead for another team.
            if matches!(after.state, TeamState::Withdrawn | TeamState::Declined) {
                let r = express(
                    &lead.b,
                    &w.posting_id,
                    &[("name", "Again"), ("statement", "Again.")],
                )
                .await;
                assert_eq!(r.status(), StatusCode::SEE_OTHER);
            }
        }
    }

    // The same faculty member endorses once; a second one may add theirs.
    let (_, team_id) = lone_team(&app, &w, "twice@proj-univ.ac.kr").await;
    let r = w
        .prof
        .b
        .post_form(&format!("/teams/{team_id}/endorse"), &[])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let before = snapshot(&app.db, &team_id).await;
    let r = w
        .prof
        .b
        .post_form(&format!("/teams/{team_id}/endorse"), &[])
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("already endorsed"));
    assert_eq!(snapshot(&app.db, &team_id).await, before);
    let lecturer = person(&app, "lecturer@proj-univ.ac.kr", UserKind::Instructor).await;
    courses::enroll(&app.db, &w.course_id, &lecturer.id, CourseRole::Instructor)
        .await
        .unwrap();
    let r = lecturer
        .b
        .post_form(&format!("/teams/{team_id}/endorse"), &[("note", "Agreed")])
        .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "an instructor of the university's course is faculty"
    );
    assert_eq!(
        projects::endorsements(&app.db, &team_id)
            .await
            .unwrap()
            .len(),
        2
    );

    // Only the lead withdraws; only the company or faculty decline.
    let r = w
        .company
        .b
        .post_form(&format!("/teams/{team_id}/withdraw"), &[])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let other = student(&app, &w, "other@proj-univ.ac.kr").await;
    let r = other
        .b
        .post_form(&format!("/teams/{team_id}/decline"), &[])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = w
        .mentor
        .b
        .post_form(&format!("/teams/{team_id}/approve-company"), &[])
        .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the mentor approves for the company"
    );

    // A declined team sees why, and is told.
    let (lead, team_id) = lone_team(&app, &w, "nope@proj-univ.ac.kr").await;
    let r = w
        .prof
        .b
        .post_form(
            &format!("/teams/{team_id}/decline"),
            &[("reason", "Scope too small for one")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = lead
        .b
        .get_text(&format!("/postings/{}/interest", w.posting_id))
        .await;
    assert!(html.contains("Declined: Scope too small for one"), "{html}");
    let n = notifications_of(&app.db, &lead.id).await;
    assert!(n.iter().any(|(m, _)| m.contains("was declined")), "{n:?}");
});

both_backends!(
    interest_is_refused_clearly_and_stores_nothing,
    |app: TestApp| async move {
        let w = world(&app, false).await;
        let lead = student(&app, &w, "lead@proj-univ.ac.kr").await;
        let taken = student(&app, &w, "taken@proj-univ.ac.kr").await;
        let (a, b, c) = (
            student(&app, &w, "a@proj-univ.ac.kr").await,
            student(&app, &w, "b@proj-univ.ac.kr").await,
            student(&app, &w, "c@proj-univ.ac.kr").await,
        );
        let far = person(&app, "far@far-univ.ac.kr", UserKind::Student).await;
        let r = express(
            &taken.b,
            &w.posting_id,
            &[("name", "First"), ("statement", "x")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let count = teams_count(&app.db).await;

        // Only students of the posting's university may express interest.
        for p in [&far, &w.company, &w.prof] {
            let r =
                p.b.get(&format!("/postings/{}/interest", w.posting_id))
                    .await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", p.email);
            let r = express(&p.b, &w.posting_id, &[("name", "X"), ("statement", "x")]).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", p.email);
        }

        let cases: Vec<(String, &str)> = vec![
            ("nobody@proj-univ.ac.kr".into(), "no account has this email"),
            (far.email.clone(), "not a student of this project"),
            (taken.email.clone(), "already on a team for this project"),
            (
                format!("{}, {}, {}", a.email, b.email, c.email),
                "larger than this project allows",
            ),
            ("not-an-email".into(), "Enter a valid email address"),
        ];
        for (members, message) in cases {
            let r = express(
                &lead.b,
                &w.posting_id,
                &[
                    ("name", "Mine"),
                    ("statement", "We can."),
                    ("members", &members),
                ],
            )
            .await;
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{members}");
            let html = r.text().await.unwrap();
            assert!(html.contains(message), "{members}: {html}");
            assert_eq!(teams_count(&app.db).await, count, "{members}");
        }
        let r = express(&lead.b, &w.posting_id, &[("name", ""), ("statement", "")]).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = r.text().await.unwrap();
        assert!(html.contains("Give the team a name") && html.contains("Write a short statement"));

        // The lead is on one live team per posting.
        let r = express(
            &taken.b,
            &w.posting_id,
            &[("name", "Second"), ("statement", "x")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("You are already on a team for this project"));
        assert_eq!(teams_count(&app.db).await, count);

        // A closed posting takes no more interest.
        assert!(postings::transition(
            &app.db,
            &w.posting_id,
            &[PostingState::Open],
            PostingState::Closed,
            &w.company.id,
            ""
        )
        .await
        .unwrap());
        let r = express(
            &lead.b,
            &w.posting_id,
            &[("name", "Late"), ("statement", "x")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("not accepting expressions of interest"));
        assert_eq!(teams_count(&app.db).await, count);
        // The team that applied still sees its standing.
        let (status, html) = taken
            .b
            .get_text(&format!("/postings/{}/interest", w.posting_id))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("First"));

        // Postings that are not published, or not projects, are not found.
        let draft = postings::create(
            &app.db,
            PostingKind::Project,
            &orgs::by_slug(&app.db, "proj-co").await.unwrap().unwrap().id,
            &w.uni_id,
            &PostingFields {
                title: "Draft".into(),
                ..PostingFields::default()
            },
            &w.company.id,
        )
        .await
        .unwrap();
        let r = lead.b.get(&format!("/postings/{draft}/interest")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let internship = postings::create(
            &app.db,
            PostingKind::Internship,
            &orgs::by_slug(&app.db, "proj-co").await.unwrap().unwrap().id,
            &w.uni_id,
            &PostingFields {
                title: "Intern".into(),
                ..PostingFields::default()
            },
            &w.company.id,
        )
        .await
        .unwrap();
        let r = w
            .company
            .b
            .get(&format!("/postings/{internship}/teams"))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
);

/// A formed team of `lead` + one member, approved by the world's company and prof.
async fn formed_team(
    app: &TestApp,
    w: &World,
    lead_email: &str,
    member_email: &str,
) -> (Person, Person, String) {
    let lead = student(app, w, lead_email).await;
    let member = student(app, w, member_email).await;
    let r = express(
        &lead.b,
        &w.posting_id,
        &[
            ("name", lead_email),
            ("statement", "Us."),
            ("members", member_email),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let team_id = team_of(&app.db, &w.posting_id, &lead).await;
    let r = member
        .b
        .post_form(&format!("/teams/{team_id}/accept"), &[])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    for (b, p) in [
        (&w.company.b, "approve-company"),
        (&w.prof.b, "approve-advisor"),
    ] {
        let r = b.post_form(&format!("/teams/{team_id}/{p}"), &[]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }
    (lead, member, team_id)
}

both_backends!(
    messages_and_milestones_in_the_space,
    |app: TestApp| async move {
        let w = world(&app, false).await;
        let (lead, member, team_id) =
            formed_team(&app, &w, "lead@proj-univ.ac.kr", "mem@proj-univ.ac.kr").await;
        let (_, _, other_team) =
            formed_team(&app, &w, "l2@proj-univ.ac.kr", "m2@proj-univ.ac.kr").await;
        let space = format!("/projects/{team_id}");

        // The project's GPU budget: none yet, then a voucher granted to it.
        let (_, html) = lead.b.get_text(&space).await;
        assert!(html.contains("No GPU voucher is granted to this project"));
        let scope = sanhak::db::vouchers::Scope::project(&team_id);
        sanhak::db::vouchers::grant(
            &app.db,
            &sanhak::db::vouchers::NewVoucher {
                scope: &scope,
                amount_ms: 160 * 3_600_000,
                tf_label: "160 TF",
                valid_from: 0,
                valid_until: i64::MAX / 2,
                source: "AI voucher programme",
                granted_by: &w.prof.id,
            },
        )
        .await
        .unwrap();
        let (_, html) = lead.b.get_text(&space).await;
        assert!(
            html.contains("GPU budget: <strong>160 GPU-hours</strong> left"),
            "{html}"
        );

        // A message: Markdown, sanitised; the others are told, not the author.
        let r = lead
            .b
            .post_form(
                &format!("{space}/messages"),
                &[("body", "Baseline is **done**. <img src=x onerror=alert(1)>")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, html) = w.mentor.b.get_text(&space).await;
        assert!(html.contains("Baseline is <strong>done</strong>"), "{html}");
        assert!(!html.contains("onerror"));
        for p in [&member, &w.mentor, &w.company, &w.prof] {
            let n = notifications_of(&app.db, &p.id).await;
            assert!(
                n.iter()
                    .any(|(m, l)| m.contains("wrote in") && *l == format!("{space}#messages")),
                "{}: {n:?}",
                p.email
            );
        }
        assert!(!notifications_of(&app.db, &lead.id)
            .await
            .iter()
            .any(|(m, _)| m.contains("wrote in")));
        let r = lead
            .b
            .post_form(&format!("{space}/messages"), &[("body", "   ")])
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("Write a message"));
        assert_eq!(
            projects::messages(&app.db, &team_id).await.unwrap().len(),
            1
        );

        // Site admins look but do not take part; outsiders do neither.
        let r = w
            .admin
            .b
            .post_form(&format!("{space}/messages"), &[("body", "hi")])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let outsider = student(&app, &w, "out@proj-univ.ac.kr").await;
        let r = outsider
            .b
            .post_form(&format!("{space}/messages"), &[("body", "hi")])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            projects::messages(&app.db, &team_id).await.unwrap().len(),
            1
        );

        // Milestones: a past due date not done shows as late; status changes.
        let r = w
            .mentor
            .b
            .post_form(
                &format!("{space}/milestones"),
                &[
                    ("title", "Data audit"),
                    ("due_on", "2020-01-15"),
                    ("description", ""),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = member
            .b
            .post_form(
                &format!("{space}/milestones"),
                &[
                    ("title", "Report"),
                    ("due_on", "2999-06-01"),
                    ("description", "Final"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let n = notifications_of(&app.db, &lead.id).await;
        assert!(
            n.iter().any(|(m, l)| m.contains("New milestone")
                && m.contains("Data audit")
                && *l == format!("{space}#milestones")),
            "{n:?}"
        );
        let (_, html) = lead.b.get_text(&space).await;
        assert!(html.contains("data-late=\"1\""), "{html}");
        assert_eq!(html.matches("data-late=\"1\"").count(), 1);
        assert!(html.contains(">Late<"));
        let milestones = projects::milestones(&app.db, &team_id).await.unwrap();
        assert_eq!(milestones[0].title, "Data audit");
        let audit = &milestones[0].id;
        let r = lead
            .b
            .post_form(
                &format!("{space}/milestones/{audit}/status"),
                &[("status", "done")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, html) = lead.b.get_text(&space).await;
        assert!(
            !html.contains("data-late=\"1\""),
            "a done milestone is not late"
        );
        let r = lead
            .b
            .post_form(
                &format!("{space}/milestones/{audit}/status"),
                &[("status", "finished")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        // Another team's milestone cannot be reached through this space.
        let r = w
            .company
            .b
            .post_form(
                &format!("/projects/{other_team}/milestones"),
                &[
                    ("title", "Theirs"),
                    ("due_on", "2030-01-01"),
                    ("description", ""),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let theirs = projects::milestones(&app.db, &other_team).await.unwrap()[0]
            .id
            .clone();
        let r = lead
            .b
            .post_form(
                &format!("{space}/milestones/{theirs}/status"),
                &[("status", "done")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            projects::milestones(&app.db, &other_team).await.unwrap()[0]
                .status
                .as_str(),
            "planned"
        );
        // Bad dates are form errors.
        for (due, message) in [("", "Choose a due date"), ("2027-02-30", "YYYY-MM-DD")] {
            let r = lead
                .b
                .post_form(
                    &format!("{space}/milestones"),
                    &[("title", "X"), ("due_on", due), ("description", "")],
                )
                .await;
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(r.text().await.unwrap().contains(message), "{due}");
        }
        assert_eq!(
            projects::milestones(&app.db, &team_id).await.unwrap().len(),
            2
        );
    }
);

/// A multipart/form-data body with one file field `file`.
fn multipart(bytes: &[u8], filename: &str) -> (String, Vec<u8>) {
    sanhak_tests::multipart_body(&[], &[("file", filename, bytes)])
}

async fn upload(b: &Browser, team_id: &str, bytes: &[u8], filename: &str) -> reqwest::Response {
    let csrf = b.csrf().await;
    let (ct, body) = multipart(bytes, filename);
    b.client
        .post(format!("{}/projects/{team_id}/files?_csrf={csrf}", b.base))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Stored file rows, and files under the data folder's `files/`.
async fn stored(app: &TestApp) -> (i64, usize) {
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stored_files")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let dir = app.state.config.data_dir.join("files");
    let mut n = 0;
    if let Ok(shards) = std::fs::read_dir(&dir) {
        for shard in shards.flatten() {
            n += std::fs::read_dir(shard.path())
                .map(|d| d.count())
                .unwrap_or(0);
        }
    }
    (rows, n)
}

both_backends!(
    file_uploads_are_checked_and_nothing_is_half_stored,
    |app: TestApp| async move {
        let w = world(&app, false).await;
        let (lead, _, team_id) =
            formed_team(&app, &w, "lead@proj-univ.ac.kr", "mem@proj-univ.ac.kr").await;
        let (_, _, other_team) =
            formed_team(&app, &w, "l2@proj-univ.ac.kr", "m2@proj-univ.ac.kr").await;

        let pdf = b"%PDF-1.7\nproject plan\n".to_vec();
        let r = upload(&lead.b, &team_id, &pdf, "plan v1.pdf").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(stored(&app).await, (1, 1));
        let files = projects::files(&app.db, &team_id).await.unwrap();
        assert_eq!(files.len(), 1);
        let file_id = files[0].id.clone();

        // Downloads: an attachment of the checked type, never sniffed.
        let r = w
            .mentor
            .b
            .get(&format!("/projects/{team_id}/files/{file_id}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/pdf");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let cd = h["content-disposition"].to_str().unwrap().to_owned();
        assert!(
            cd.starts_with("attachment;") && cd.contains("plan%20v1.pdf"),
            "{cd}"
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), pdf.as_slice());
        let outsider = student(&app, &w, "out@proj-univ.ac.kr").await;
        let r = outsider
            .b
            .get(&format!("/projects/{team_id}/files/{file_id}"))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = w
            .company
            .b
            .get(&format!("/projects/{other_team}/files/{file_id}"))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "a file is reached only through its own space"
        );

        // Hostile uploads: each refused with a clear error, nothing written.
        let mut too_big = b"%PDF-1.7\n".to_vec();
        too_big.resize(sanhak::files::MAX_PROJECT_FILE_BYTES + 1, b'x');
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "../../etc/cron.d/evil.txt",
                b"* * * * * root sh".to_vec(),
                "use a plain name without folders",
            ),
            (
                "..\\..\\evil.txt",
                b"x".to_vec(),
                "use a plain name without folders",
            ),
            ("huge.pdf", too_big, "The file is too large"),
            (
                "invoice.pdf",
                b"MZ\x90\x00\x03 this is an executable".to_vec(),
                "do not match its type",
            ),
            (
                "photo.png",
                b"%PDF-1.7 not a png".to_vec(),
                "do not match its type",
            ),
            (
                "notes.txt",
                vec![0xff, 0xfe, 0x00, 0x41],
                "do not match its type",
            ),
            ("run.exe", b"MZ".to_vec(), "not accepted"),
            ("empty.txt", Vec::new(), "The file is empty"),
        ];
        for (name, bytes, message) in cases {
            let r = upload(&lead.b, &team_id, &bytes, name).await;
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name}");
            let html = r.text().await.unwrap();
            assert!(html.contains(message), "{name}: {html}");
            assert_eq!(stored(&app).await, (1, 1), "{name}: nothing stored");
            assert_eq!(projects::files(&app.db, &team_id).await.unwrap().len(), 1);
        }
        // The traversal went nowhere outside the store either.
        assert!(!app.state.config.data_dir.join("etc").exists());

        // Viewers who do not take part cannot upload.
        let r = upload(&w.admin.b, &team_id, b"hello", "hello.txt").await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = upload(&outsider.b, &team_id, b"hello", "hello.txt").await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(stored(&app).await, (1, 1));
    }
);

both_backends!(
    the_demo_team_is_seeded_formed_once,
    |app: TestApp| async move {
        let w = world(&app, true).await;
        let lead = student(&app, &w, "lead@proj-univ.ac.kr").await;
        let member = student(&app, &w, "mem@proj-univ.ac.kr").await;
        let id = projects::seed_demo_team(
            &app.db,
            &w.posting_id,
            &lead.id,
            std::slice::from_ref(&member.id),
            &w.prof.id,
            &w.company.id,
        )
        .await
        .unwrap();
        let again = projects::seed_demo_team(
            &app.db,
            &w.posting_id,
            &lead.id,
            std::slice::from_ref(&member.id),
            &w.prof.id,
            &w.company.id,
        )
        .await
        .unwrap();
        assert_eq!(id, again);
        assert_eq!(teams_count(&app.db).await, 1);
        let team = projects::get(&app.db, &id).await.unwrap().unwrap();
        assert_eq!(team.state, TeamState::Formed);
        assert_eq!(projects::milestones(&app.db, &id).await.unwrap().len(), 2);
        let (status, html) = member.b.get_text(&format!("/projects/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("Welcome aboard"));
    }
);

both_backends!(
    sanhak_demo_seeds_a_formed_team_on_its_joint_project,
    |app: TestApp| async move {
        sanhak::demo::seed(&app.db).await.unwrap();
        sanhak::demo::seed(&app.db).await.unwrap();
        let teams: Vec<(String, String)> = sqlx::query_as("SELECT id, state FROM project_teams")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(teams.len(), 1, "seeding twice makes one team");
        assert_eq!(teams[0].1, "formed");
        let minji = app.browser();
        let r = minji
            .login("minji@students.hanbit.ac.kr", sanhak::demo::DEMO_PASSWORD)
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (status, html) = minji.get_text(&format!("/projects/{}", teams[0].0)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("Intent classifier"), "{html}");
        assert!(html.contains("id=\"nda-notice\""));
    }
);
