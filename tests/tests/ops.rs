//! Operations endpoints and error pages.

use reqwest::StatusCode;
use sanhak_tests::{both_backends, TestApp};

both_backends!(health_metrics_and_error_pages, |app: TestApp| async move {
    let b = app.browser();
    let (status, body) = b.get_text("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let (status, html) = b.get_text("/no/such/page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("Page not found"));
    let r = b.get("/api/v1/nothing-here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"], "not_found");

    b.get("/login").await;
    let (status, metrics) = b.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let login_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sanhak_http_requests_total")
                && l.contains("route=\"/login\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no /login counter in:\n{metrics}"));
    let count: f64 = login_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0);
    assert!(metrics.contains("sanhak_http_request_duration_seconds_bucket"));
    assert!(
        !metrics.contains("route=\"/no/such/page\""),
        "unmatched paths do not become labels"
    );

    let r = b.get("/static/style.css").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    assert_eq!(
        b.get("/static/../Cargo.toml").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = b.get("/").await;
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
});
