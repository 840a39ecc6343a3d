//! Database access. One schema (`migrations/`) runs on SQLite and PostgreSQL
//! through sqlx's `Any` driver; every query of an area lives in that area's
//! module here. The few statements that must differ between the backends are
//! chosen through [`Backend`].

pub mod applications;
pub mod courses;
pub mod files;
pub mod invites;
pub mod jobs;
pub mod labs;
pub mod notifications;
pub mod orgs;
pub mod postings;
pub mod projects;
pub mod publish;
pub mod regrades;
pub mod runners;
pub mod submissions;
pub mod throttle;
pub mod tokens;
pub mod users;
pub mod vouchers;

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _};

/// Which database engine the URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("unsupported database URL: use sqlite://PATH or postgres://…")
        }
    }
}

/// The pool plus the backend it talks to.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

pub type Row = AnyRow;

const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

/// Advisory lock key that serialises installing the claim function when
/// several app processes start at once ("sanhak" in ASCII).
const CLAIM_FUNCTION_LOCK: i64 = 0x7361_6e68_616b;

impl Db {
    /// Connects and, for SQLite, creates the file if missing and turns on WAL
    /// mode, a busy timeout and foreign keys on every connection.
    #[tracing::instrument(skip_all)]
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite => ensure_sqlite_create(url),
            Backend::Postgres => url.to_owned(),
        };
        let max = match backend {
            Backend::Sqlite => 8,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                                 PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .context("connecting to the database")?;
        Ok(Self { pool, backend })
    }

    /// A transaction that writes. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a transaction that reads before it writes then
    /// waits for other writers (the busy timeout) instead of failing with
    /// `SQLITE_BUSY_SNAPSHOT` when another commits in between.
    pub async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Applies every migration in `migrations/`.
    #[tracing::instrument(skip_all)]
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!("../migrations")
            .run(&self.pool)
            .await
            .context("applying migrations")?;
        if self.backend == Backend::Postgres {
            // The queue's claim runs inside PostgreSQL (see `jobs`); replaced
            // on every start, under a lock, so it always matches this build.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CLAIM_FUNCTION_LOCK)
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(&jobs::pg_claim_function())
                .execute(&mut *tx)
                .await
                .context("installing the queue's claim function")?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// SQLite URLs get `mode=rwc` so a missing file is created.
fn ensure_sqlite_create(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Opens a typed SQLite pool on the same file for the session store, which
/// needs a concrete pool type.
pub async fn sqlite_pool(url: &str) -> anyhow::Result<sqlx::SqlitePool> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .context("parsing the SQLite URL")?
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))
        .foreign_keys(true);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .context("connecting to SQLite for sessions")
}

/// Opens a typed PostgreSQL pool for the session store.
pub async fn postgres_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .context("connecting to PostgreSQL for sessions")
}

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// True when the error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}
