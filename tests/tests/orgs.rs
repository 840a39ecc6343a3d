//! Organisations: an org admin (not a site admin) manages members and invites
//! new company members; plain members cannot.

use reqwest::StatusCode;
use sanhak::db::orgs;
use sanhak::domain::{OrgKind, OrgRole, UserKind};
use sanhak_tests::{both_backends, invite_path, shown_value, TestApp, PASSWORD};

both_backends!(
    company_admin_invites_and_manages_members,
    |app: TestApp| async move {
        let company = app.create_org("nuri-ai", OrgKind::Company).await;
        let (boss, boss_b) = app.logged_in("boss@nuri.example", UserKind::Company).await;
        orgs::set_member(&app.db, &company.id, &boss.id, OrgRole::Admin)
            .await
            .unwrap();
        let (plain, plain_b) = app.logged_in("plain@nuri.example", UserKind::Company).await;
        orgs::set_member(&app.db, &company.id, &plain.id, OrgRole::Member)
            .await
            .unwrap();

        // A plain member sees the page but cannot manage or invite.
        let (status, html) = plain_b.get_text("/orgs/nuri-ai").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("boss"), "members are listed");
        assert!(
            !html.contains("/invitations"),
            "no invite form for plain members"
        );
        assert_eq!(
            plain_b
                .post_form("/orgs/nuri-ai/invitations", &[])
                .await
                .status(),
            StatusCode::FORBIDDEN
        );

        // The admin invites; the link makes a company account in this company.
        let r = boss_b
            .post_form(
                "/orgs/nuri-ai/invitations",
                &[("email", "new@nuri.example"), ("role", "member")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        let path = invite_path(&html);
        let newcomer = app.browser();
        let r = newcomer
            .post_form(
                &path,
                &[
                    // The invitation is locked to its email: what is typed here is ignored.
                    ("email", "someone.else@evil.example"),
                    ("display_name", "New Engineer"),
                    ("password", PASSWORD),
                    ("password_confirm", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let user = sanhak::db::users::by_email(&app.db, "new@nuri.example")
            .await
            .unwrap()
            .expect("locked email used");
        assert_eq!(user.kind, UserKind::Company);
        assert_eq!(
            orgs::role_of(&app.db, &company.id, &user.id).await.unwrap(),
            Some(OrgRole::Member)
        );
        assert!(
            sanhak::db::users::by_email(&app.db, "someone.else@evil.example")
                .await
                .unwrap()
                .is_none()
        );

        // The admin removes the plain member; that member can no longer manage anything.
        let r = boss_b
            .post_form(&format!("/orgs/nuri-ai/members/{}/remove", plain.id), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            orgs::role_of(&app.db, &company.id, &plain.id)
                .await
                .unwrap(),
            None
        );

        // Adding an unknown email is a form error, not a 500.
        let r = boss_b
            .post_form(
                "/orgs/nuri-ai/members",
                &[("email", "ghost@nuri.example"), ("role", "member")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("No account has this email"));
    }
);

both_backends!(admin_creates_orgs_and_users, |app: TestApp| async move {
    let (_, admin) = app.logged_in("root@sanhak.test", UserKind::Admin).await;
    let r = admin
        .post_form(
            "/admin/orgs",
            &[
                ("name", "Hanbit University"),
                ("slug", "hanbit-univ"),
                ("kind", "university"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = admin
        .post_form(
            "/admin/orgs",
            &[
                ("name", "Again"),
                ("slug", "hanbit-univ"),
                ("kind", "university"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Another organisation already uses this short name"));
    let r = admin
        .post_form(
            "/admin/orgs",
            &[("name", "Bad"), ("slug", "../etc"), ("kind", "castle")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        orgs::list(&app.db).await.unwrap().len(),
        1,
        "nothing half-stored"
    );

    let r = admin
        .post_form(
            "/admin/users",
            &[
                ("email", "ta@uni.ac.kr"),
                ("display_name", "TA"),
                ("kind", "instructor"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    let password = shown_value(&html, "id=\"one-time-password\">");
    let b = app.browser();
    assert_eq!(
        b.login("ta@uni.ac.kr", &password).await.status(),
        StatusCode::SEE_OTHER
    );
});
