//! The JSON API: bearer tokens, JSON errors, and the OpenAPI document.

use reqwest::{Method, StatusCode};
use sanhak::domain::{OrgKind, OrgRole, UserKind};
use sanhak_tests::{both_backends, shown_value, Api, TestApp};
use serde_json::{json, Value};

async fn token_for(
    app: &TestApp,
    email: &str,
    kind: UserKind,
) -> (sanhak::db::users::User, String) {
    let (user, b) = app.logged_in(email, kind).await;
    let r = b.post_form("/settings/tokens", &[("name", "test")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    (user, shown_value(&html, "id=\"new-token\">"))
}

both_backends!(api_course_story, |app: TestApp| async move {
    let uni = app.create_org("api-univ", OrgKind::University).await;
    let (prof, prof_token) = token_for(&app, "prof@uni.ac.kr", UserKind::Instructor).await;
    sanhak::db::orgs::set_member(&app.db, &uni.id, &prof.id, OrgRole::Member)
        .await
        .unwrap();
    let prof_api = Api::new(&app, Some(prof_token.clone()));

    let me: Value = prof_api
        .request(Method::GET, "/api/v1/me")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "prof@uni.ac.kr");
    assert_eq!(me["kind"], "instructor");

    let r = prof_api
        .request(Method::POST, "/api/v1/courses")
        .json(&json!({"code": "bad code!", "title": "", "term": "2027-spring", "university_id": uni.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"], "validation_failed");
    assert_eq!(err["fields"]["code"], "course_code_invalid");
    assert_eq!(err["fields"]["title"], "title_required");

    let r = prof_api
        .request(Method::POST, "/api/v1/courses")
        .json(&json!({"code": "AI502", "title": "Adapters", "term": "2027-fall", "university_id": uni.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let course: Value = r.json().await.unwrap();
    let course_id = course["id"].as_str().unwrap().to_owned();
    let join_code = course["join_code"].as_str().unwrap().to_owned();
    assert_eq!(course["role"], "instructor");

    let (_, stu_token) = token_for(&app, "stu@uni.ac.kr", UserKind::Student).await;
    let stu_api = Api::new(&app, Some(stu_token));
    let r = stu_api
        .request(Method::POST, "/api/v1/courses/join")
        .json(&json!({"join_code": join_code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let joined: Value = r.json().await.unwrap();
    assert_eq!(joined["role"], "student");
    assert!(
        joined["join_code"].is_null(),
        "students do not get the join code"
    );

    let r = stu_api
        .request(Method::GET, &format!("/api/v1/courses/{course_id}/roster"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"], "forbidden");
    assert!(err["message"].is_string());

    let roster: Value = prof_api
        .request(Method::GET, &format!("/api/v1/courses/{course_id}/roster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roster = roster.as_array().unwrap();
    assert_eq!(roster.len(), 2);
    let stu_id = roster.iter().find(|r| r["role"] == "student").unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = prof_api
        .request(
            Method::DELETE,
            &format!("/api/v1/courses/{course_id}/roster/{stu_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = stu_api
        .request(Method::GET, &format!("/api/v1/courses/{course_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = prof_api
        .request(Method::POST, "/api/v1/courses")
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_json");
});

both_backends!(
    api_tokens_are_hashed_and_revocable,
    |app: TestApp| async move {
        let (user, token) = token_for(&app, "tok@uni.ac.kr", UserKind::Student).await;
        assert!(token.starts_with("shk_"));
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM api_tokens WHERE user_id = $1")
                .bind(&user.id)
                .fetch_all(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(stored.len(), 1);
        assert_ne!(stored[0], token, "only a hash is stored");
        assert_eq!(stored[0], sanhak::secrets::hash_token(&token));

        let api = Api::new(&app, Some(token.clone()));
        assert_eq!(
            api.request(Method::GET, "/api/v1/me")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );

        let anon = Api::new(&app, None);
        let r = anon
            .request(Method::GET, "/api/v1/me")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
        let bad = Api::new(&app, Some("shk_000".into()));
        assert_eq!(
            bad.request(Method::GET, "/api/v1/me")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );

        let id: String = sqlx::query_scalar("SELECT id FROM api_tokens WHERE user_id = $1")
            .bind(&user.id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        let b = app.browser();
        b.login("tok@uni.ac.kr", sanhak_tests::PASSWORD).await;
        let r = b
            .post_form(&format!("/settings/tokens/{id}/revoke"), &[])
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            api.request(Method::GET, "/api/v1/me")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );

        // A session cookie does not authenticate API calls (no CSRF exposure).
        let r = b.get("/api/v1/me").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
);

both_backends!(
    openapi_documents_every_api_route,
    |app: TestApp| async move {
        let doc: Value = reqwest::get(app.url("/api/v1/openapi.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let documented: Vec<String> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();

        // Every operation in the document is served (an unknown route is a JSON `not_found`
        // with no matched route; a served one answers 401 to an anonymous caller).
        for op in &documented {
            let (method, path) = op.split_once(' ').unwrap();
            let concrete = path.replace("{course_id}", "c").replace("{user_id}", "u");
            let r = Api::new(&app, None)
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{op} is documented but not routed"
            );
        }

        // Every API route in the router source is in the document.
        let source = include_str!("../../app/src/web/api/courses.rs");
        let mut in_source = Vec::new();
        for chunk in source.split("#[utoipa::path(").skip(1) {
            let method = chunk.split(',').next().unwrap().trim().to_uppercase();
            let start = chunk.find("path = \"").unwrap() + 8;
            let path: String = chunk[start..].chars().take_while(|c| *c != '"').collect();
            in_source.push(format!("{method} {path}"));
        }
        let handlers = source.matches("pub async fn ").count();
        assert_eq!(
            in_source.len(),
            handlers,
            "every API handler carries #[utoipa::path]"
        );
        for op in &in_source {
            assert!(documented.contains(op), "{op} missing from openapi.json");
        }
        let router = include_str!("../../app/src/web/api/mod.rs");
        assert!(
            !router.contains(".route("),
            "API routes must be added with routes!, not .route()"
        );
        let routes_calls = router.matches(".routes(routes!(").count();
        assert!(routes_calls >= 8);
    }
);
