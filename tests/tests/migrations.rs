//! Migrations apply cleanly to an empty database on both backends, and again
//! as a no-op.

use sanhak::db::Db;
use sanhak_tests::{Backend, TestDb};

async fn applies_cleanly(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = Db::connect(&test_db.url).await.expect("connect");
    db.migrate().await.expect("first run");
    db.migrate().await.expect("second run is a no-op");
    for table in [
        "users",
        "organisations",
        "org_members",
        "courses",
        "enrollments",
        "api_tokens",
        "invitations",
        "login_failures",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert_eq!(n, 0, "{table} starts empty");
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&db.pool)
            .await
            .expect("migration table");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files, "every migration file applied");
    if backend == Backend::Sqlite {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(timeout >= 1000);
    }
}

#[tokio::test]
async fn sqlite() {
    applies_cleanly(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres() {
    applies_cleanly(Backend::Postgres).await;
}
