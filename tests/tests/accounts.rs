//! Signup, login, logout, session rotation, throttling and CSRF, on both backends.

use reqwest::StatusCode;
use sanhak::domain::UserKind;
use sanhak_tests::{both_backends, invite_path, location, TestApp, PASSWORD};

fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.cookies()
        .find(|c| c.name() == "sanhak_session")
        .map(|c| c.value().to_owned())
}

both_backends!(signup_login_logout, |app: TestApp| async move {
    let b = app.browser();
    let r = b
        .post_form(
            "/signup",
            &[
                ("email", "New.Student@Uni.ac.kr"),
                ("display_name", "New Student"),
                ("password", PASSWORD),
                ("password_confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/dashboard");
    let (status, html) = b.get_text("/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("New Student"),
        "dashboard shows the signed-in user"
    );
    assert!(html.contains("Welcome to Sanhak."), "flash shown once");
    let (_, again) = b.get_text("/dashboard").await;
    assert!(!again.contains("Welcome to Sanhak."), "flash is one-time");

    // Self-signup only makes students.
    let user = sanhak::db::users::by_email(&app.db, "new.student@uni.ac.kr")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.kind, UserKind::Student);
    assert!(user.password_hash.0.starts_with("$argon2id$"));

    let r = b.post_form("/logout", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = b.get("/dashboard").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/login?next=/dashboard");

    let r = b.login("new.student@uni.ac.kr", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(b.get("/dashboard").await.status(), StatusCode::OK);
});

both_backends!(session_id_rotates_at_login, |app: TestApp| async move {
    app.create_user("rot@uni.ac.kr", UserKind::Student).await;
    let b = app.browser();
    // An anonymous session exists first (it holds the CSRF token).
    let first = b.get("/login").await;
    let before = session_cookie(&first).expect("anonymous session cookie");
    let r = b.login("rot@uni.ac.kr", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let after = session_cookie(&r).expect("login sets a new session cookie");
    assert_ne!(before, after, "session id must change at login");

    // The pre-login cookie is useless afterwards: a fixation attempt fails.
    let attacker = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = attacker
        .get(app.url("/dashboard"))
        .header("cookie", format!("sanhak_session={before}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "old session id must not be logged in"
    );

    // The cookie is HttpOnly and SameSite=Lax.
    let set_cookie: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .chain(first.headers().get_all("set-cookie").iter())
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set_cookie
        .iter()
        .find(|c| c.starts_with("sanhak_session="))
        .expect("cookie set");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Lax"), "{session}");
});

both_backends!(
    wrong_password_and_unknown_email_look_the_same,
    |app: TestApp| async move {
        app.create_user("known@uni.ac.kr", UserKind::Student).await;
        let b = app.browser();
        let r = b.login("known@uni.ac.kr", "not the password").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let wrong = r.text().await.unwrap();
        let r = b.login("nobody@uni.ac.kr", "not the password").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let unknown = r.text().await.unwrap();
        assert!(wrong.contains("Wrong email or password."));
        assert!(unknown.contains("Wrong email or password."));
        assert_eq!(
            b.get("/dashboard").await.status(),
            StatusCode::SEE_OTHER,
            "still logged out"
        );
    }
);

both_backends!(duplicate_email_is_a_form_error, |app: TestApp| async move {
    app.create_user("taken@uni.ac.kr", UserKind::Student).await;
    let b = app.browser();
    let r = b
        .post_form(
            "/signup",
            &[
                ("email", "TAKEN@uni.ac.kr"),
                ("display_name", "Someone"),
                ("password", PASSWORD),
                ("password_confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("id=\"email-error\""),
        "error next to the email field"
    );
    assert!(html.contains("already exists"));
    assert!(
        html.contains("value=\"TAKEN@uni.ac.kr\""),
        "form keeps what was typed"
    );
    assert_eq!(sanhak::db::users::count(&app.db).await.unwrap(), 1);
});

both_backends!(
    signup_validation_errors_sit_next_to_fields,
    |app: TestApp| async move {
        let b = app.browser();
        let r = b
            .post_form(
                "/signup",
                &[
                    ("email", "not-an-email"),
                    ("display_name", ""),
                    ("password", "short"),
                    ("password_confirm", "other"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = r.text().await.unwrap();
        for id in [
            "email-error",
            "display_name-error",
            "password-error",
            "password_confirm-error",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "missing {id}");
        }
        assert!(html.contains("aria-invalid=\"true\""));
        assert_eq!(
            sanhak::db::users::count(&app.db).await.unwrap(),
            0,
            "nothing stored"
        );
    }
);

both_backends!(login_throttling, |app: TestApp| async move {
    app.create_user("victim@uni.ac.kr", UserKind::Student).await;
    let b = app.browser();
    for i in 0..10 {
        let r = b.login("victim@uni.ac.kr", "guess").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "attempt {i}");
    }
    // The 11th attempt is refused even with the right password.
    let r = b.login("victim@uni.ac.kr", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 15 * 60, "retry-after {retry}");
    let html = r.text().await.unwrap();
    assert!(html.contains("Too many failed logins"));

    // Per IP too: another account from the same address is also refused.
    app.create_user("other@uni.ac.kr", UserKind::Student).await;
    let r = app.browser().login("other@uni.ac.kr", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "IP limit");
});

both_backends!(post_without_csrf_is_rejected, |app: TestApp| async move {
    app.create_user("csrf@uni.ac.kr", UserKind::Student).await;
    let b = app.browser();
    let r = b
        .post_form_without_csrf(
            "/login",
            &[("email", "csrf@uni.ac.kr"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = b
        .post_form_without_csrf(
            "/login",
            &[
                ("email", "csrf@uni.ac.kr"),
                ("password", PASSWORD),
                ("_csrf", "forged"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        b.get("/dashboard").await.status(),
        StatusCode::SEE_OTHER,
        "not logged in"
    );

    // Logged in, a state-changing form without the token does nothing.
    assert_eq!(
        b.login("csrf@uni.ac.kr", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let r = b
        .post_form_without_csrf("/settings/tokens", &[("name", "sneaky")])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, html) = b.get_text("/settings/tokens").await;
    assert!(!html.contains("sneaky"));
});

both_backends!(
    next_parameter_only_redirects_locally,
    |app: TestApp| async move {
        app.create_user("next@uni.ac.kr", UserKind::Student).await;
        let b = app.browser();
        let token = b.csrf().await;
        let r = b
            .client
            .post(app.url("/login"))
            .form(&[
                ("email", "next@uni.ac.kr"),
                ("password", PASSWORD),
                ("next", "//evil.example/x"),
                ("_csrf", &token),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&r), "/dashboard");
    }
);

both_backends!(
    invitation_makes_an_instructor_once,
    |app: TestApp| async move {
        let uni = app
            .create_org("test-univ", sanhak::domain::OrgKind::University)
            .await;
        let (_, admin) = app.logged_in("admin@sanhak.test", UserKind::Admin).await;
        let r = admin
            .post_form(
                "/admin/invitations",
                &[
                    ("kind", "instructor"),
                    ("org_id", &uni.id),
                    ("org_role", "member"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        let path = invite_path(&html);

        let newcomer = app.browser();
        assert_eq!(newcomer.get(&path).await.status(), StatusCode::OK);
        let fields = [
            ("email", "prof.lee@uni.ac.kr"),
            ("display_name", "Prof Lee"),
            ("password", PASSWORD),
            ("password_confirm", PASSWORD),
        ];
        let r = newcomer.post_form(&path, &fields).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let user = sanhak::db::users::by_email(&app.db, "prof.lee@uni.ac.kr")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.kind, UserKind::Instructor);
        let role = sanhak::db::orgs::role_of(&app.db, &uni.id, &user.id)
            .await
            .unwrap();
        assert_eq!(role, Some(sanhak::domain::OrgRole::Member));

        // The link works once.
        let again = app.browser();
        assert_eq!(again.get(&path).await.status(), StatusCode::NOT_FOUND);
        let r = again
            .post_form(
                &path,
                &[
                    ("email", "x@uni.ac.kr"),
                    ("display_name", "X"),
                    ("password", PASSWORD),
                    ("password_confirm", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(sanhak::db::users::by_email(&app.db, "x@uni.ac.kr")
            .await
            .unwrap()
            .is_none());
    }
);

both_backends!(disabled_accounts_cannot_log_in, |app: TestApp| async move {
    let user = app.create_user("gone@uni.ac.kr", UserKind::Student).await;
    let b = app.browser();
    assert_eq!(
        b.login("gone@uni.ac.kr", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    sanhak::db::users::set_disabled(&app.db, &user.id, true)
        .await
        .unwrap();
    assert_eq!(
        b.get("/dashboard").await.status(),
        StatusCode::SEE_OTHER,
        "existing session ends"
    );
    assert_eq!(
        app.browser()
            .login("gone@uni.ac.kr", PASSWORD)
            .await
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
});
