//! The `sanhak` binary: `demo` is idempotent, `user add` prints a one-time
//! password, and `--help` documents the settings.

use std::process::Command;

fn sanhak(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sanhak"))
        .args(args)
        .env("SANHAK_DATA_DIR", data_dir)
        .env_remove("DATABASE_URL")
        .env("SANHAK_LOG", "warn")
        .current_dir(data_dir)
        .output()
        .expect("run sanhak")
}

async fn counts(db_file: &std::path::Path) -> Vec<(String, i64)> {
    let db = sanhak::db::Db::connect(&format!("sqlite://{}", db_file.display()))
        .await
        .unwrap();
    let mut out = Vec::new();
    for table in [
        "users",
        "organisations",
        "org_members",
        "courses",
        "enrollments",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        out.push((table.to_owned(), n));
    }
    out
}

#[tokio::test]
async fn demo_twice_creates_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let first = sanhak(dir.path(), &["demo", "--seed-only"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(out.contains("minji@students.hanbit.ac.kr"), "{out}");
    assert!(out.contains(sanhak::demo::DEMO_PASSWORD));
    let db_file = dir.path().join("sanhak.db");
    assert!(
        db_file.exists(),
        "demo creates the SQLite database in the data dir"
    );
    let after_first = counts(&db_file).await;
    assert_eq!(
        after_first,
        [
            ("users", 6),
            ("organisations", 2),
            ("org_members", 2),
            ("courses", 1),
            ("enrollments", 4)
        ]
        .map(|(t, n)| (t.to_owned(), n))
    );

    let second = sanhak(dir.path(), &["demo", "--seed-only"]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        counts(&db_file).await,
        after_first,
        "second run adds nothing"
    );
    // The stored session key is reused, not regenerated.
    assert!(dir.path().join("session.key").exists());
}

#[tokio::test]
async fn user_add_prints_a_one_time_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = sanhak(
        dir.path(),
        &[
            "user",
            "add",
            "--email",
            "ta@uni.ac.kr",
            "--role",
            "instructor",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("one-time password: "))
        .expect("password printed");
    let password = line.trim_start_matches("one-time password: ");
    assert!(password.len() >= 32);
    let db = sanhak::db::Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("sanhak.db").display()
    ))
    .await
    .unwrap();
    let user = sanhak::db::users::by_email(&db.clone(), "ta@uni.ac.kr")
        .await
        .unwrap()
        .unwrap();
    assert!(sanhak::secrets::verify_password(
        password,
        &user.password_hash.0
    ));
    assert_eq!(user.kind, sanhak::domain::UserKind::Instructor);

    let dup = sanhak(
        dir.path(),
        &[
            "user",
            "add",
            "--email",
            "ta@uni.ac.kr",
            "--role",
            "student",
        ],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    let short = sanhak(
        dir.path(),
        &[
            "user",
            "add",
            "--email",
            "x@uni.ac.kr",
            "--role",
            "student",
            "--password",
            "short",
        ],
    );
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 10"));
}

#[test]
fn help_documents_every_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = sanhak(dir.path(), &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for env in [
        "DATABASE_URL",
        "SANHAK_DATA_DIR",
        "SANHAK_BIND",
        "SANHAK_PUBLIC_URL",
        "SANHAK_SESSION_SECRET",
        "SANHAK_SECURE_COOKIES",
        "SANHAK_TRUST_PROXY",
        "SANHAK_LOG",
        "SANHAK_CONFIG",
        "SANHAK_LABS_DIR",
    ] {
        assert!(help.contains(env), "--help lacks {env}");
    }
}

/// `sanhak lab train` reads its device from `SANHAK_DEVICE` (as the runner
/// sets it in the sandbox): a name it does not know is a usage error, and a
/// device this build cannot open ends with status 75 before any training, so
/// the runner reports the runner's fault rather than the recipe's.
#[test]
fn lab_train_takes_its_device_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/../labs/fashion-transfer");
    let recipe = format!("{lab}/solution/recipe.toml");
    let out = dir.path().join("out");
    let train = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_sanhak"))
            .args(["lab", "train", lab, "--recipe", &recipe, "--out"])
            .arg(&out)
            .args(["--step-scale", "0.01"])
            .env("SANHAK_DEVICE", device)
            .env("SANHAK_DATA_DIR", dir.path())
            .env("SANHAK_LOG", "warn")
            .output()
            .expect("run sanhak")
    };

    let bad = train("tpu:0");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`cpu`, `cuda` or `cuda:N`"), "{err}");

    if !sanhak_runner::train::TrainDevice::cuda_built() {
        let gpu = train("cuda:0");
        assert_eq!(gpu.status.code(), Some(75));
        let err = String::from_utf8_lossy(&gpu.stderr);
        assert!(err.contains("built without the `cuda` feature"), "{err}");
        assert!(
            gpu.stdout.is_empty(),
            "events before the device was open: {}",
            String::from_utf8_lossy(&gpu.stdout)
        );
        assert!(!out.join("model.safetensors").exists());
    }

    let cpu = train("cpu");
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    let events = String::from_utf8_lossy(&cpu.stdout);
    assert!(events.contains("\"finished\""), "{events}");
    assert!(out.join("model.safetensors").is_file());
}
