//! The industry side: company ↔ university connections, postings and their
//! approval, applications with CVs, internal notes, notifications, search.
//! Every story runs on SQLite and on PostgreSQL.

use reqwest::StatusCode;
use sanhak::db::{applications, orgs, postings};
use sanhak::domain::{ApplicationState, CourseRole, OrgKind, OrgRole, PostingState, UserKind};
use sanhak_tests::{both_backends, location, Browser, TestApp};

const PDF: &[u8] = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n";

/// A university with an admin and an enrolled student, and a company with an
/// admin and a plain member, not yet connected.
struct World {
    university: orgs::Org,
    company: orgs::Org,
    uni_admin: Browser,
    company_admin: Browser,
    engineer: Browser,
    engineer_id: String,
    student: Browser,
    student_id: String,
}

async fn world(app: &TestApp) -> World {
    let university = app.create_org("hanbit", OrgKind::University).await;
    let company = app.create_org("nuri", OrgKind::Company).await;
    let (prof, uni_admin) = app
        .logged_in("prof@hanbit.ac.kr", UserKind::Instructor)
        .await;
    orgs::set_member(&app.db, &university.id, &prof.id, OrgRole::Admin)
        .await
        .unwrap();
    let (boss, company_admin) = app.logged_in("boss@nuri.example", UserKind::Company).await;
    orgs::set_member(&app.db, &company.id, &boss.id, OrgRole::Admin)
        .await
        .unwrap();
    let (eng, engineer) = app.logged_in("eng@nuri.example", UserKind::Company).await;
    orgs::set_member(&app.db, &company.id, &eng.id, OrgRole::Member)
        .await
        .unwrap();
    let (stu, student) = app
        .logged_in("minji@students.hanbit.ac.kr", UserKind::Student)
        .await;
    let course = sanhak::db::courses::create(
        &app.db,
        sanhak::db::courses::NewCourse {
            code: &sanhak::domain::CourseCode::parse("AI501").unwrap(),
            title: "Fine-tuning",
            term: "2027-spring",
            university_id: &university.id,
            description: "",
            instructor_id: &prof.id,
        },
    )
    .await
    .unwrap();
    sanhak::db::courses::enroll(&app.db, &course, &stu.id, CourseRole::Student)
        .await
        .unwrap();
    World {
        university,
        company,
        uni_admin,
        company_admin,
        engineer,
        engineer_id: eng.id,
        student,
        student_id: stu.id,
    }
}

async fn connect(app: &TestApp, w: &World) {
    let r = w
        .company_admin
        .post_form(
            "/orgs/nuri/connections",
            &[("university_id", &w.university.id), ("message", "hello")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = w
        .uni_admin
        .post_form(
            &format!("/orgs/hanbit/connections/{}", w.company.id),
            &[("to", "approved")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        orgs::connection_state(&app.db, &w.company.id, &w.university.id)
            .await
            .unwrap(),
        Some(sanhak::domain::ConnectionState::Approved)
    );
}

fn internship_form<'a>(university_id: &'a str, title: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("university_id", university_id),
        ("title", title),
        ("role", "ML engineer intern"),
        ("body", "Eight weeks on our **model team**."),
        ("skills", "NLP, candle, nlp"),
        ("starts_on", "2027-07-01"),
        ("ends_on", "2027-08-26"),
        ("location", "Seoul"),
        ("compensation", "2,500,000 KRW a month"),
        ("apply_by", "2099-12-31"),
    ]
}

/// Creates an internship through the pages and returns its id.
async fn draft_internship(w: &World, title: &str) -> String {
    let r = w
        .engineer
        .post_form(
            "/orgs/nuri/postings/new?kind=internship",
            &internship_form(&w.university.id, title),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "draft saved");
    location(&r).trim_start_matches("/postings/").to_owned()
}

/// Draft → submitted → approved → open, through the pages.
async fn open_internship(w: &World, title: &str) -> String {
    let id = draft_internship(w, title).await;
    let ok = |r: reqwest::Response| assert_eq!(r.status(), StatusCode::SEE_OTHER);
    ok(w.engineer
        .post_form(&format!("/postings/{id}/submit"), &[])
        .await);
    ok(w.uni_admin
        .post_form(&format!("/postings/{id}/approve"), &[("comment", "")])
        .await);
    ok(w.engineer
        .post_form(&format!("/postings/{id}/open"), &[])
        .await);
    id
}

/// The student applies with a statement and a CV; returns the application id.
async fn apply_with_cv(b: &Browser, posting_id: &str, statement: &str, cv_name: &str) -> String {
    let r = b
        .post_multipart(
            &format!("/postings/{posting_id}/apply"),
            &[("statement", statement)],
            &[("cv", cv_name, PDF)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "application sent");
    location(&r).trim_start_matches("/applications/").to_owned()
}

async fn state_of(app: &TestApp, id: &str) -> PostingState {
    postings::get(&app.db, id).await.unwrap().unwrap().state
}

both_backends!(
    an_unapproved_company_cannot_post_to_a_university,
    |app: TestApp| async move {
        let w = world(&app).await;
        // Not connected: the form refuses the university and stores nothing.
        let r = w
            .engineer
            .post_form(
                "/orgs/nuri/postings/new?kind=internship",
                &internship_form(&w.university.id, "Summer internship"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("approved to post to"));
        assert!(postings::of_org(&app.db, &w.company.id)
            .await
            .unwrap()
            .is_empty());

        // A request alone is not enough.
        let r = w
            .company_admin
            .post_form(
                "/orgs/nuri/connections",
                &[("university_id", &w.university.id)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        // Only a company admin may ask; a plain member may not.
        let r = w
            .engineer
            .post_form(
                "/orgs/nuri/connections",
                &[("university_id", &w.university.id)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // The university admin is notified, with an unread count in the nav.
        let (_, html) = w.uni_admin.get_text("/dashboard").await;
        assert!(html.contains("1 unread"), "unread count in the nav bar");
        let r = w
            .engineer
            .post_form(
                "/orgs/nuri/postings/new?kind=internship",
                &internship_form(&w.university.id, "Summer internship"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

        // The company cannot approve its own connection.
        let r = w
            .company_admin
            .post_form(
                &format!("/orgs/hanbit/connections/{}", w.company.id),
                &[("to", "approved")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);

        // Approved: drafting works. Revoked again: submitting is refused.
        let r = w
            .uni_admin
            .post_form(
                &format!("/orgs/hanbit/connections/{}", w.company.id),
                &[("to", "approved")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let id = draft_internship(&w, "Summer internship").await;
        let approved = draft_internship(&w, "Winter internship").await;
        for (who, path) in [(&w.engineer, "submit"), (&w.uni_admin, "approve")] {
            let r = who
                .post_form(&format!("/postings/{approved}/{path}"), &[])
                .await;
            assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        }
        let r = w
            .uni_admin
            .post_form(
                &format!("/orgs/hanbit/connections/{}", w.company.id),
                &[("to", "revoked")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = w
            .engineer
            .post_form(&format!("/postings/{id}/submit"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(state_of(&app, &id).await, PostingState::Draft);
        // An approved posting cannot be opened once the connection is revoked.
        let r = w
            .engineer
            .post_form(&format!("/postings/{approved}/open"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(state_of(&app, &approved).await, PostingState::Approved);
        // Revoking twice is a disallowed move: a clear error, no change.
        let r = w
            .uni_admin
            .post_form(
                &format!("/orgs/hanbit/connections/{}", w.company.id),
                &[("to", "revoked")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }
);

both_backends!(
    the_posting_state_machine_allows_only_its_moves,
    |app: TestApp| async move {
        let w = world(&app).await;
        connect(&app, &w).await;
        let id = draft_internship(&w, "Summer internship").await;
        let posting = postings::get(&app.db, &id).await.unwrap().unwrap();
        assert_eq!(posting.skills, ",nlp,candle,", "skills normalised");

        // A draft is the company's own: the university does not see it yet.
        let r = w
            .uni_admin
            .post_form(&format!("/postings/{id}/approve"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // Disallowed from draft: approve (even by a site admin), open, close
        // (a clear error, no change).
        let (_, site_admin) = app.logged_in("root@sanhak.test", UserKind::Admin).await;
        for (who, path) in [
            (&site_admin, "approve"),
            (&w.engineer, "open"),
            (&w.engineer, "close"),
        ] {
            let r = who.post_form(&format!("/postings/{id}/{path}"), &[]).await;
            assert_eq!(r.status(), StatusCode::CONFLICT, "{path} from draft");
            assert_eq!(state_of(&app, &id).await, PostingState::Draft);
        }
        // The draft is invisible to students (not even its existence).
        assert_eq!(
            w.student.get(&format!("/postings/{id}")).await.status(),
            StatusCode::NOT_FOUND
        );

        // Submit; the company may not approve its own posting; a plain
        // university member may not either.
        let r = w
            .engineer
            .post_form(&format!("/postings/{id}/submit"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = w
            .engineer
            .post_form(&format!("/postings/{id}/approve"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let (ta, ta_b) = app.logged_in("ta@hanbit.ac.kr", UserKind::Instructor).await;
        orgs::set_member(&app.db, &w.university.id, &ta.id, OrgRole::Member)
            .await
            .unwrap();
        // (A plain member of the university does not even see it before it opens.)
        let r = ta_b
            .post_form(&format!("/postings/{id}/approve"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(state_of(&app, &id).await, PostingState::Submitted);
        // Submitted postings cannot be edited.
        let r = w
            .engineer
            .post_form(
                &format!("/postings/{id}/edit"),
                &internship_form(&w.university.id, "Changed"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);

        // Changes requested needs a comment; then the company sees it.
        let r = w
            .uni_admin
            .post_form(
                &format!("/postings/{id}/request-changes"),
                &[("comment", "")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(state_of(&app, &id).await, PostingState::Submitted);
        let r = w
            .uni_admin
            .post_form(
                &format!("/postings/{id}/request-changes"),
                &[("comment", "State the stipend per month.")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(state_of(&app, &id).await, PostingState::ChangesRequested);
        let (_, html) = w.engineer.get_text(&format!("/postings/{id}")).await;
        assert!(html.contains("State the stipend per month."));

        // Edit, resubmit, approve, open.
        let r = w
            .engineer
            .post_form(
                &format!("/postings/{id}/edit"),
                &internship_form(&w.university.id, "Summer internship (paid)"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        for (who, path, to) in [
            (&w.engineer, "submit", PostingState::Submitted),
            (&w.uni_admin, "approve", PostingState::Approved),
            (&w.engineer, "open", PostingState::Open),
        ] {
            let r = who.post_form(&format!("/postings/{id}/{path}"), &[]).await;
            assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
            assert_eq!(state_of(&app, &id).await, to);
        }
        // Open: the student sees it, rendered safely.
        let (status, html) = w.student.get_text(&format!("/postings/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<strong>model team</strong>"));
        assert!(html.contains("Summer internship (paid)"));
        // Disallowed from open: submit, approve, open again.
        for (who, path) in [
            (&w.engineer, "submit"),
            (&w.uni_admin, "approve"),
            (&w.engineer, "open"),
        ] {
            let r = who.post_form(&format!("/postings/{id}/{path}"), &[]).await;
            assert_eq!(r.status(), StatusCode::CONFLICT, "{path} from open");
            assert_eq!(state_of(&app, &id).await, PostingState::Open);
        }
        let r = w
            .engineer
            .post_form(&format!("/postings/{id}/close"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(state_of(&app, &id).await, PostingState::Closed);
        // The history keeps every move with who made it.
        let events = postings::events(&app.db, &id).await.unwrap();
        let moves: Vec<_> = events.iter().map(|e| e.to_state).collect();
        assert_eq!(
            moves,
            [
                PostingState::Draft,
                PostingState::Submitted,
                PostingState::ChangesRequested,
                PostingState::Submitted,
                PostingState::Approved,
                PostingState::Open,
                PostingState::Closed
            ]
        );

        // A posting whose deadline passed expires.
        let id2 = open_internship(&w, "Winter internship").await;
        sqlx::query("UPDATE postings SET apply_by = 1 WHERE id = $1")
            .bind(&id2)
            .execute(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(postings::expire_due(&app.db).await.unwrap(), 1);
        assert_eq!(state_of(&app, &id2).await, PostingState::Expired);
    }
);

both_backends!(
    applications_move_through_the_pipeline,
    |app: TestApp| async move {
        let w = world(&app).await;
        connect(&app, &w).await;
        let id = open_internship(&w, "Summer internship").await;

        let app_id = apply_with_cv(
            &w.student,
            &id,
            "I built a Korean intent classifier.",
            "이력서.pdf",
        )
        .await;
        // Applying twice is refused.
        let r = w
            .student
            .post_multipart(
                &format!("/postings/{id}/apply"),
                &[("statement", "again")],
                &[("cv", "cv.pdf", PDF)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);

        // The company is notified and sees the applicant and the CV.
        let (_, html) = w.engineer.get_text("/notifications").await;
        assert!(html.contains("applied to"));
        let r = w.engineer.get(&format!("/applications/{app_id}/cv")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        assert!(r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment"));
        assert_eq!(r.bytes().await.unwrap().as_ref(), PDF);

        // An internal note never reaches the applicant.
        let r = w
            .engineer
            .post_form(
                &format!("/applications/{app_id}/notes"),
                &[("body", "Strong NLP background; SECRET-NOTE-42")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, html) = w
            .engineer
            .get_text(&format!("/applications/{app_id}"))
            .await;
        assert!(html.contains("SECRET-NOTE-42"));
        let (status, html) = w.student.get_text(&format!("/applications/{app_id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("SECRET-NOTE-42"));
        assert!(!html.contains("Internal notes"));
        // The applicant cannot write notes either.
        let r = w
            .student
            .post_form(&format!("/applications/{app_id}/notes"), &[("body", "x")])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);

        // Disallowed moves: the applicant cannot advance themselves; the
        // company cannot accept on the applicant's behalf or skip to accepted.
        for (who, to) in [
            (&w.student, "offer"),
            (&w.student, "accepted"),
            (&w.engineer, "accepted"),
            (&w.engineer, "interview"),
        ] {
            let r = who
                .post_form(&format!("/applications/{app_id}/move"), &[("to", to)])
                .await;
            assert_eq!(r.status(), StatusCode::CONFLICT, "move to {to}");
        }
        let r = w
            .engineer
            .post_form(&format!("/applications/{app_id}/move"), &[("to", "bogus")])
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let current = applications::get(&app.db, &app_id).await.unwrap().unwrap();
        assert_eq!(current.state, ApplicationState::Applied);

        // The company moves it along; the applicant accepts the offer.
        for to in ["under_review", "interview", "offer"] {
            let r = w
                .engineer
                .post_form(&format!("/applications/{app_id}/move"), &[("to", to)])
                .await;
            assert_eq!(r.status(), StatusCode::SEE_OTHER, "move to {to}");
        }
        let (_, html) = w.student.get_text("/applications").await;
        assert!(html.contains("Offer"));
        let (_, html) = w.student.get_text("/notifications").await;
        assert!(html.contains("is now: Offer"));
        let r = w
            .student
            .post_form(
                &format!("/applications/{app_id}/move"),
                &[("to", "accepted")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        // Final: no one can move it any more.
        let r = w
            .student
            .post_form(
                &format!("/applications/{app_id}/move"),
                &[("to", "withdrawn")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let history: Vec<_> = applications::events(&app.db, &app_id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.to_state, e.by_name.unwrap_or_default()))
            .collect();
        assert_eq!(
            history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [
                ApplicationState::Applied,
                ApplicationState::UnderReview,
                ApplicationState::Interview,
                ApplicationState::Offer,
                ApplicationState::Accepted
            ]
        );
        assert_eq!(history[1].1, "eng", "who moved it is kept");
        assert_eq!(history[4].1, "minji");
    }
);

both_backends!(
    applicants_and_companies_see_only_their_own,
    |app: TestApp| async move {
        let w = world(&app).await;
        connect(&app, &w).await;
        let id = open_internship(&w, "Summer internship").await;
        let app_id = apply_with_cv(&w.student, &id, "Hello", "cv.pdf").await;

        // Another student of the same university sees the posting but not the application.
        let (other, other_b) = app
            .logged_in("junho@students.hanbit.ac.kr", UserKind::Student)
            .await;
        let course_id: String = sqlx::query_scalar("SELECT id FROM courses")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        sanhak::db::courses::enroll(&app.db, &course_id, &other.id, CourseRole::Student)
            .await
            .unwrap();
        let (status, html) = other_b.get_text(&format!("/postings/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("minji"), "no applicant list for students");
        for path in [
            format!("/applications/{app_id}"),
            format!("/applications/{app_id}/cv"),
        ] {
            assert_eq!(other_b.get(&path).await.status(), StatusCode::FORBIDDEN);
        }

        // Another company sees neither the applicants nor the application.
        let rival = app.create_org("rival", OrgKind::Company).await;
        let (rv, rival_b) = app.logged_in("hr@rival.example", UserKind::Company).await;
        orgs::set_member(&app.db, &rival.id, &rv.id, OrgRole::Admin)
            .await
            .unwrap();
        assert_eq!(
            rival_b.get(&format!("/postings/{id}")).await.status(),
            StatusCode::NOT_FOUND,
            "not in the audience of an internship"
        );
        for path in [
            format!("/applications/{app_id}"),
            format!("/applications/{app_id}/cv"),
        ] {
            let r = rival_b.get(&path).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert!(!r.text().await.unwrap().contains("minji"));
        }
        let r = rival_b
            .post_form(
                &format!("/applications/{app_id}/move"),
                &[("to", "rejected")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let current = applications::get(&app.db, &app_id).await.unwrap().unwrap();
        assert_eq!(current.state, ApplicationState::Applied);

        // A student of another university does not see the posting at all.
        let (_, outsider) = app.logged_in("kim@other.ac.kr", UserKind::Student).await;
        assert_eq!(
            outsider.get(&format!("/postings/{id}")).await.status(),
            StatusCode::NOT_FOUND
        );
        let (_, html) = outsider.get_text("/postings").await;
        assert!(!html.contains("Summer internship"));
        let (_, html) = w.student.get_text("/postings").await;
        assert!(html.contains("Summer internship"));

        // The company members cannot apply to their own posting; the
        // applicant list on the posting is theirs alone.
        let (_, html) = w.engineer.get_text(&format!("/postings/{id}")).await;
        assert!(html.contains("Applications (1)"));
        assert!(html.contains("minji"));
        assert_eq!(
            applications::of_applicant(&app.db, &w.student_id)
                .await
                .unwrap()
                .len(),
            1
        );
        let _ = &w.engineer_id;
    }
);

both_backends!(bad_cv_uploads_store_nothing, |app: TestApp| async move {
    let w = world(&app).await;
    connect(&app, &w).await;
    let id = open_internship(&w, "Summer internship").await;
    let big = {
        let mut v = PDF.to_vec();
        v.resize(sanhak::files::MAX_CV_BYTES + 1, b' ');
        v
    };
    let cases: Vec<(&str, &[u8], &str)> = vec![
        ("../../etc/cv.pdf", PDF, "plain name"),
        ("cv.pdf", b"MZ\x90\x00 not a pdf", "do not match"),
        ("cv.exe", PDF, "not accepted"),
        ("cv.pdf", &big, "too large"),
    ];
    for (name, bytes, message) in cases {
        let r = w
            .student
            .post_multipart(
                &format!("/postings/{id}/apply"),
                &[("statement", "Hello")],
                &[("cv", name, bytes)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        let html = r.text().await.unwrap();
        assert!(html.contains(message), "{name}: {message}");
        assert!(html.contains("id=\"cv-error\""), "error next to the field");
    }
    // Without a CV, or without a statement.
    let r = w
        .student
        .post_multipart(
            &format!("/postings/{id}/apply"),
            &[("statement", "Hi")],
            &[],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("Attach your CV"));
    let r = w
        .student
        .post_multipart(
            &format!("/postings/{id}/apply"),
            &[("statement", "  ")],
            &[("cv", "cv.pdf", PDF)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Nothing was stored: no application, no file row, no bytes on disk.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applications")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stored_files")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(!app.test_db.dir().join("files").exists());
});

both_backends!(
    visiting_positions_go_the_other_way,
    |app: TestApp| async move {
        let w = world(&app).await;
        // The university posts; its admin approves; connected companies' members apply.
        let r = w
            .uni_admin
            .post_form(
                "/orgs/hanbit/postings/new?kind=visiting",
                &[
                    ("title", "Teach the LoRA module"),
                    ("role", "Adjunct lecturer"),
                    ("body", "Two weeks of AI501."),
                    ("skills", "lora, teaching"),
                    ("starts_on", "2027-04-05"),
                    ("ends_on", "2027-04-01"),
                ],
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "period ends before it starts"
        );
        let r = w
            .uni_admin
            .post_form(
                "/orgs/hanbit/postings/new?kind=visiting",
                &[
                    ("title", "Teach the LoRA module"),
                    ("role", "Adjunct lecturer"),
                    ("body", "Two weeks of AI501."),
                    ("skills", "lora, teaching"),
                    ("starts_on", "2027-04-05"),
                    ("ends_on", "2027-04-16"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let id = location(&r).trim_start_matches("/postings/").to_owned();
        // A company cannot post a visiting position, nor a university an internship.
        let r = w
            .engineer
            .get("/orgs/nuri/postings/new?kind=visiting")
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = w
            .uni_admin
            .get("/orgs/hanbit/postings/new?kind=internship")
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        for path in ["submit", "approve", "open"] {
            let r = w
                .uni_admin
                .post_form(&format!("/postings/{id}/{path}"), &[])
                .await;
            assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        }
        // Not connected yet: the company engineer does not see it.
        assert_eq!(
            w.engineer.get(&format!("/postings/{id}")).await.status(),
            StatusCode::NOT_FOUND
        );
        connect(&app, &w).await;
        let (_, html) = w.engineer.get_text("/postings?kind=visiting").await;
        assert!(html.contains("Teach the LoRA module"));
        // Students are not its audience.
        let (_, html) = w.student.get_text(&format!("/postings/{id}")).await;
        assert!(!html.contains("apply-form"));
        let r = w
            .student
            .post_multipart(
                &format!("/postings/{id}/apply"),
                &[("statement", "me")],
                &[],
            )
            .await;
        assert!(r.status() == StatusCode::CONFLICT || r.status() == StatusCode::NOT_FOUND);
        // The engineer applies without a CV (optional here).
        let r = w
            .engineer
            .post_multipart(
                &format!("/postings/{id}/apply"),
                &[("statement", "I fine-tune models for a living.")],
                &[],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let app_id = location(&r).trim_start_matches("/applications/").to_owned();
        // The university side moves it; the company sees its own status.
        let r = w
            .uni_admin
            .post_form(
                &format!("/applications/{app_id}/move"),
                &[("to", "under_review")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let (_, html) = w.engineer.get_text("/applications").await;
        assert!(html.contains("Under review"));
    }
);

both_backends!(search_filters_postings, |app: TestApp| async move {
    let w = world(&app).await;
    connect(&app, &w).await;
    open_internship(&w, "Summer internship").await;
    let r = w
        .engineer
        .post_form(
            "/orgs/nuri/postings/new?kind=internship",
            &[
                ("university_id", &w.university.id),
                ("title", "Vision internship"),
                ("role", "CV intern"),
                ("body", "Images."),
                ("skills", "vision"),
                ("starts_on", "2028-01-01"),
                ("ends_on", "2028-02-01"),
            ],
        )
        .await;
    let id = location(&r).trim_start_matches("/postings/").to_owned();
    for (who, path) in [
        (&w.engineer, "submit"),
        (&w.uni_admin, "approve"),
        (&w.engineer, "open"),
    ] {
        assert_eq!(
            who.post_form(&format!("/postings/{id}/{path}"), &[])
                .await
                .status(),
            StatusCode::SEE_OTHER
        );
    }
    let shows = |html: &str, title: &str| html.contains(&format!(">{title}</a>"));
    let (_, html) = w.student.get_text("/postings?skill=NLP").await;
    assert!(shows(&html, "Summer internship") && !shows(&html, "Vision internship"));
    let (_, html) = w.student.get_text("/postings?q=vision").await;
    assert!(!shows(&html, "Summer internship") && shows(&html, "Vision internship"));
    let (_, html) = w
        .student
        .get_text("/postings?from=2027-12-01&until=2028-03-01")
        .await;
    assert!(!shows(&html, "Summer internship") && shows(&html, "Vision internship"));
    let (_, html) = w.student.get_text("/postings?kind=project").await;
    assert!(!shows(&html, "Summer internship") && !shows(&html, "Vision internship"));
    let (_, html) = w
        .student
        .get_text(&format!("/postings?org={}", w.company.id))
        .await;
    assert!(shows(&html, "Summer internship") && shows(&html, "Vision internship"));
    // LIKE wildcards in the search are literal.
    let (_, html) = w.student.get_text("/postings?q=%25").await;
    assert!(!shows(&html, "Summer internship"));
    let (status, _) = w.student.get_text("/postings?from=not-a-date").await;
    assert_eq!(status, StatusCode::OK);
});
