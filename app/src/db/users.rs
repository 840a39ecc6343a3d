//! Users: accounts, password hashes and account kinds.

use sqlx::FromRow;

use super::{is_unique_violation, new_id, now, Db};
use crate::domain::{DisplayName, Email, UserKind};

#[derive(Clone, Debug, FromRow)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub password_hash: Redacted,
    pub kind: UserKind,
    pub disabled: i64,
    pub created_at: i64,
}

/// A password hash that never shows in `Debug` output.
#[derive(Clone, Default)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl sqlx::Type<sqlx::Any> for Redacted {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <String as sqlx::Type<sqlx::Any>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Redacted {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        <String as sqlx::Decode<'r, sqlx::Any>>::decode(value).map(Redacted)
    }
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.kind == UserKind::Admin
    }
    pub fn is_disabled(&self) -> bool {
        self.disabled != 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("an account with this email already exists")]
    DuplicateEmail,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "id, email, display_name, password_hash, kind, disabled, created_at";

#[tracing::instrument(skip_all)]
pub async fn create(
    db: &Db,
    email: &Email,
    name: &DisplayName,
    password_hash: &str,
    kind: UserKind,
) -> Result<User, CreateUserError> {
    let id = new_id();
    let created_at = now();
    let result = sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash, kind, disabled, created_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6)",
    )
    .bind(&id)
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .bind(kind.as_str())
    .bind(created_at)
    .execute(&db.pool)
    .await;
    match result {
        Ok(_) => Ok(User {
            id,
            email: email.as_str().to_owned(),
            display_name: name.as_str().to_owned(),
            password_hash: Redacted(password_hash.to_owned()),
            kind,
            disabled: 0,
            created_at,
        }),
        Err(e) if is_unique_violation(&e) => Err(CreateUserError::DuplicateEmail),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all)]
pub async fn by_email(db: &Db, email: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE email = $1"))
        .bind(email)
        .fetch_optional(&db.pool)
        .await
}

#[tracing::instrument(skip_all)]
pub async fn by_id(db: &Db, id: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// Users whose email or name contains `query` (all when empty), newest first.
#[tracing::instrument(skip_all)]
pub async fn search(db: &Db, query: &str, limit: i64, offset: i64) -> sqlx::Result<Vec<User>> {
    let pattern = format!("%{}%", query.trim().to_lowercase());
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM users WHERE LOWER(email) LIKE $1 OR LOWER(display_name) LIKE $2 \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(&pattern)
    .bind(&pattern)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn count(db: &Db) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&db.pool)
        .await
}

#[tracing::instrument(skip_all)]
pub async fn set_kind(db: &Db, id: &str, kind: UserKind) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE users SET kind = $1 WHERE id = $2")
        .bind(kind.as_str())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[tracing::instrument(skip_all)]
pub async fn set_disabled(db: &Db, id: &str, disabled: bool) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
        .bind(i64::from(disabled))
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[tracing::instrument(skip_all)]
pub async fn set_password_hash(db: &Db, id: &str, hash: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(hash)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
