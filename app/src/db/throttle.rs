//! Login throttling: failures are recorded per account (email) and per client
//! address; too many within the window blocks further attempts for a while.

use super::{new_id, now, Db};

/// Failures allowed in the window before login is refused.
pub const MAX_FAILURES: i64 = 10;
/// The window, in seconds (15 minutes).
pub const WINDOW_SECS: i64 = 15 * 60;

#[derive(Clone, Copy, Debug)]
pub enum Scope {
    Email,
    Ip,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Email => "email",
            Scope::Ip => "ip",
        }
    }
}

/// Seconds until the subject may try again, or `None` when it is not blocked.
#[tracing::instrument(skip_all)]
pub async fn blocked_for(db: &Db, scope: Scope, subject: &str) -> sqlx::Result<Option<i64>> {
    let at = now();
    let since = at - WINDOW_SECS;
    let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(at) FROM login_failures WHERE scope = $1 AND subject = $2 AND at > $3",
    )
    .bind(scope.as_str())
    .bind(subject)
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    Ok(match oldest {
        Some(oldest) if count >= MAX_FAILURES => Some((oldest + WINDOW_SECS - at).max(1)),
        _ => None,
    })
}

#[tracing::instrument(skip_all)]
pub async fn record_failure(db: &Db, scope: Scope, subject: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO login_failures (id, scope, subject, at) VALUES ($1, $2, $3, $4)")
        .bind(new_id())
        .bind(scope.as_str())
        .bind(subject)
        .bind(now())
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Forgets an account's failures after a successful login, and prunes old rows.
#[tracing::instrument(skip_all)]
pub async fn clear(db: &Db, scope: Scope, subject: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM login_failures WHERE (scope = $1 AND subject = $2) OR at < $3")
        .bind(scope.as_str())
        .bind(subject)
        .bind(now() - WINDOW_SECS)
        .execute(&db.pool)
        .await?;
    Ok(())
}
