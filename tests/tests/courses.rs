//! Courses: creation, join codes, roster management and CSV export.

use reqwest::StatusCode;
use sanhak::db::courses;
use sanhak::domain::{CourseRole, OrgKind, OrgRole, UserKind};
use sanhak_tests::{both_backends, location, TestApp};

/// An instructor (member of a university) logged in, with a created course.
async fn course_with_instructor(app: &TestApp) -> (String, sanhak_tests::Browser) {
    let uni = app.create_org("test-univ", OrgKind::University).await;
    let (prof, b) = app.logged_in("prof@uni.ac.kr", UserKind::Instructor).await;
    sanhak::db::orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Member)
        .await
        .unwrap();
    let r = b
        .post_form(
            "/courses/new",
            &[
                ("university_id", &uni.id),
                ("code", "ai501"),
                ("title", "Fine-tuning"),
                ("term", "2027-spring"),
                ("description", ""),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let id = location(&r).trim_start_matches("/courses/").to_owned();
    (id, b)
}

fn join_code_in(html: &str) -> String {
    let marker = "id=\"join-code\">";
    let start = html.find(marker).expect("join code shown") + marker.len();
    html[start..start + 8].to_owned()
}

both_backends!(
    create_course_and_duplicate_is_form_error,
    |app: TestApp| async move {
        let (id, prof) = course_with_instructor(&app).await;
        let course = courses::by_id(&app.db, &id).await.unwrap().unwrap();
        assert_eq!(course.code, "AI501");
        let r = prof
            .post_form(
                "/courses/new",
                &[
                    ("university_id", &course.university_id),
                    ("code", "AI501"),
                    ("title", "Again"),
                    ("term", "2027-spring"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("already has a course with this code"));

        // An instructor cannot create a course at a university they do not belong to.
        let other = app.create_org("other-univ", OrgKind::University).await;
        let r = prof
            .post_form(
                "/courses/new",
                &[
                    ("university_id", &other.id),
                    ("code", "X1"),
                    ("title", "T"),
                    ("term", "t"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(courses::find_by_code_term(&app.db, &other.id, "X1", "t")
            .await
            .unwrap()
            .is_none());
    }
);

both_backends!(join_code_and_regeneration, |app: TestApp| async move {
    let (id, prof) = course_with_instructor(&app).await;
    let (_, page) = prof.get_text(&format!("/courses/{id}")).await;
    let code = join_code_in(&page);

    let (_, student) = app.logged_in("s1@uni.ac.kr", UserKind::Student).await;
    assert_eq!(
        student.get(&format!("/courses/{id}")).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = student
        .post_form("/courses/join", &[("code", &code.to_lowercase())])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), format!("/courses/{id}"));
    let (status, html) = student.get_text(&format!("/courses/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !html.contains("id=\"join-code\""),
        "students do not see the join code"
    );
    let (_, dash) = student.get_text("/dashboard").await;
    assert!(dash.contains("AI501"));

    let r = prof
        .post_form(&format!("/courses/{id}/join-code"), &[])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, page) = prof.get_text(&format!("/courses/{id}")).await;
    let new_code = join_code_in(&page);
    assert_ne!(code, new_code);

    let (_, late) = app.logged_in("s2@uni.ac.kr", UserKind::Student).await;
    let r = late.post_form("/courses/join", &[("code", &code)]).await;
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "old code is dead"
    );
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("No course has this join code"));
    let r = late
        .post_form("/courses/join", &[("code", &new_code)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
});

both_backends!(roster_tas_and_removal, |app: TestApp| async move {
    let (id, prof) = course_with_instructor(&app).await;
    let ta = app.create_user("ta@uni.ac.kr", UserKind::Student).await;
    let student = app.create_user("stu@uni.ac.kr", UserKind::Student).await;
    courses::enroll(&app.db, &id, &student.id, CourseRole::Student)
        .await
        .unwrap();

    let r = prof
        .post_form(
            &format!("/courses/{id}/roster/tas"),
            &[("email", "nobody@uni.ac.kr")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("No account has this email"));
    let r = prof
        .post_form(
            &format!("/courses/{id}/roster/tas"),
            &[("email", "TA@uni.ac.kr")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        courses::role_of(&app.db, &id, &ta.id).await.unwrap(),
        Some(CourseRole::Ta)
    );

    // The TA sees the roster but cannot change it.
    let ta_b = app.browser();
    ta_b.login("ta@uni.ac.kr", sanhak_tests::PASSWORD).await;
    assert_eq!(
        ta_b.get(&format!("/courses/{id}/roster")).await.status(),
        StatusCode::OK
    );
    let r = ta_b
        .post_form(
            &format!("/courses/{id}/roster/students/{}/remove", student.id),
            &[],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = prof
        .post_form(
            &format!("/courses/{id}/roster/students/{}/remove", student.id),
            &[],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        courses::role_of(&app.db, &id, &student.id).await.unwrap(),
        None
    );
    // Removing a TA through the student route does nothing.
    let r = prof
        .post_form(
            &format!("/courses/{id}/roster/students/{}/remove", ta.id),
            &[],
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = prof
        .post_form(&format!("/courses/{id}/roster/tas/{}/remove", ta.id), &[])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(courses::role_of(&app.db, &id, &ta.id).await.unwrap(), None);
});

both_backends!(
    roster_csv_is_correct_and_formula_safe,
    |app: TestApp| async move {
        let (id, prof) = course_with_instructor(&app).await;
        let names = [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+82 10",
            "-minus",
            "@sum",
            "Kim, \"Minji\"",
        ];
        for (i, name) in names.iter().enumerate() {
            let user = app
                .create_user(&format!("csv{i}@uni.ac.kr"), UserKind::Student)
                .await;
            sqlx::query("UPDATE users SET display_name = $1 WHERE id = $2")
                .bind(*name)
                .bind(&user.id)
                .execute(&app.db.pool)
                .await
                .unwrap();
            courses::enroll(&app.db, &id, &user.id, CourseRole::Student)
                .await
                .unwrap();
        }
        let r = prof.get(&format!("/courses/{id}/roster.csv")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        assert!(r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("roster-AI501-2027-spring.csv"));
        let body = r.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(body.as_bytes());
        let headers = reader.headers().unwrap().clone();
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            ["course", "term", "name", "email", "role", "joined_utc"]
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), names.len() + 1, "instructor plus students");
        assert_eq!(&rows[0][4], "instructor");
        let got: Vec<String> = rows[1..].iter().map(|r| r[2].to_owned()).collect();
        for name in names {
            let expected = if name.starts_with(['=', '+', '-', '@']) {
                format!("'{name}")
            } else {
                name.to_owned()
            };
            assert!(got.contains(&expected), "{expected:?} not in {got:?}");
        }
        for row in &rows {
            assert!(
                !row.iter()
                    .any(|cell| cell.starts_with(['=', '+', '-', '@'])),
                "unsafe cell in {row:?}"
            );
        }

        let (_, student) = app.logged_in("plain@uni.ac.kr", UserKind::Student).await;
        assert_eq!(
            student
                .get(&format!("/courses/{id}/roster.csv"))
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
    }
);
