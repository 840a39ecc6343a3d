//! Runner tokens. A site admin creates one per runner host (`sanhak runner
//! add`); only its SHA-256 is stored, and a revoked token stops working at
//! once. Runners never see database credentials: they talk to the app.

use sanhak_runner::protocol::{self, TOKEN_PREFIX};
use sqlx::FromRow;

use super::{new_id, now, Db};
use crate::secrets::{hash_token, new_token};

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Runner {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    /// JSON of its last registration.
    pub capacity: String,
}

/// Creates a runner token; returns `(runner_id, token)`. The token is shown once.
#[tracing::instrument(skip_all)]
pub async fn create(
    db: &Db,
    name: &str,
    created_by: Option<&str>,
) -> sqlx::Result<(String, String)> {
    let id = new_id();
    let token = new_token(TOKEN_PREFIX);
    let prefix: String = token.chars().take(TOKEN_PREFIX.len() + 6).collect();
    sqlx::query(
        "INSERT INTO runners (id, name, token_hash, prefix, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(name)
    .bind(hash_token(&token))
    .bind(prefix)
    .bind(created_by)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok((id, token))
}

/// The runner a live token belongs to.
#[tracing::instrument(skip_all)]
pub async fn authenticate(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT id FROM runners WHERE token_hash = $1 AND revoked_at IS NULL")
        .bind(hash_token(token))
        .fetch_optional(&db.pool)
        .await
}

/// Records a registration (capacity and labels) and the time it was seen.
#[tracing::instrument(skip_all)]
pub async fn register(db: &Db, runner_id: &str, reg: &protocol::Register) -> sqlx::Result<()> {
    let capacity = serde_json::to_string(reg).unwrap_or_else(|_| "{}".into());
    sqlx::query("UPDATE runners SET capacity = $1, last_seen_at = $2 WHERE id = $3")
        .bind(capacity)
        .bind(now())
        .bind(runner_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Marks a runner as seen now.
pub async fn seen(db: &Db, runner_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE runners SET last_seen_at = $1 WHERE id = $2")
        .bind(now())
        .bind(runner_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn list(db: &Db) -> sqlx::Result<Vec<Runner>> {
    sqlx::query_as(
        "SELECT id, name, prefix, created_at, revoked_at, last_seen_at, capacity FROM runners ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await
}

/// Revokes a runner token (by id or by name). Returns how many were revoked.
pub async fn revoke(db: &Db, id_or_name: &str) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE runners SET revoked_at = $1 WHERE (id = $2 OR name = $2) AND revoked_at IS NULL",
    )
    .bind(now())
    .bind(id_or_name)
    .execute(&db.pool)
    .await?
    .rows_affected())
}
