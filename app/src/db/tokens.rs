//! Personal access tokens for the JSON API and the CLI. Only a SHA-256 of each
//! token is stored; the token itself is shown once, when it is created.

use sqlx::FromRow;

use super::{new_id, now, Db};
use crate::secrets::{hash_token, new_token};

#[derive(Clone, Debug, FromRow)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub const TOKEN_PREFIX: &str = "shk_";

/// Creates a token and returns it in clear, once.
#[tracing::instrument(skip_all)]
pub async fn create(db: &Db, user_id: &str, name: &str) -> sqlx::Result<String> {
    let token = new_token(TOKEN_PREFIX);
    let prefix: String = token.chars().take(TOKEN_PREFIX.len() + 6).collect();
    sqlx::query(
        "INSERT INTO api_tokens (id, user_id, name, token_hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(user_id)
    .bind(name)
    .bind(hash_token(&token))
    .bind(prefix)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(token)
}

/// The user id a live token belongs to; records its use.
#[tracing::instrument(skip_all)]
pub async fn authenticate(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    let hash = hash_token(token);
    let user_id: Option<String> = sqlx::query_scalar(
        "SELECT t.user_id FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND u.disabled = 0",
    )
    .bind(&hash)
    .fetch_optional(&db.pool)
    .await?;
    if user_id.is_some() {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2")
            .bind(now())
            .bind(&hash)
            .execute(&db.pool)
            .await?;
    }
    Ok(user_id)
}

#[tracing::instrument(skip_all)]
pub async fn of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<ApiToken>> {
    sqlx::query_as(
        "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_tokens \
         WHERE user_id = $1 ORDER BY created_at DESC",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}

/// Revokes one of the user's own tokens.
#[tracing::instrument(skip_all)]
pub async fn revoke(db: &Db, user_id: &str, token_id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now())
    .bind(token_id)
    .bind(user_id)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}
