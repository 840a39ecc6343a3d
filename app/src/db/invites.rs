//! Invitation links: instructors and company members join by invitation.

use sqlx::FromRow;

use super::{new_id, now, Db};
use crate::domain::{OrgRole, UserKind};
use crate::secrets::{hash_token, new_token};

#[derive(Clone, Debug, FromRow)]
pub struct Invitation {
    pub id: String,
    pub email: Option<String>,
    pub kind: UserKind,
    pub org_id: Option<String>,
    pub org_role: OrgRole,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

impl Invitation {
    pub fn is_usable(&self, at: i64) -> bool {
        self.used_at.is_none() && at < self.expires_at
    }
}

pub struct NewInvitation<'a> {
    pub email: Option<&'a str>,
    pub kind: UserKind,
    pub org_id: Option<&'a str>,
    pub org_role: OrgRole,
    pub created_by: &'a str,
    pub valid_for_secs: i64,
}

/// Creates an invitation and returns its token in clear (it goes into the link).
#[tracing::instrument(skip_all)]
pub async fn create(db: &Db, new: NewInvitation<'_>) -> sqlx::Result<String> {
    let token = new_token("inv_");
    let at = now();
    sqlx::query(
        "INSERT INTO invitations (id, token_hash, email, kind, org_id, org_role, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(new_id())
    .bind(hash_token(&token))
    .bind(new.email)
    .bind(new.kind.as_str())
    .bind(new.org_id)
    .bind(new.org_role.as_str())
    .bind(new.created_by)
    .bind(at)
    .bind(at + new.valid_for_secs)
    .execute(&db.pool)
    .await?;
    Ok(token)
}

#[tracing::instrument(skip_all)]
pub async fn by_token(db: &Db, token: &str) -> sqlx::Result<Option<Invitation>> {
    sqlx::query_as(
        "SELECT id, email, kind, org_id, org_role, expires_at, used_at FROM invitations WHERE token_hash = $1",
    )
    .bind(hash_token(token))
    .fetch_optional(&db.pool)
    .await
}

/// Marks an invitation used; false when someone else claimed it first.
#[tracing::instrument(skip_all)]
pub async fn claim(db: &Db, id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE invitations SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
        .bind(now())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Gives a claimed invitation back (the signup that claimed it failed).
#[tracing::instrument(skip_all)]
pub async fn release(db: &Db, id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE invitations SET used_at = NULL WHERE id = $1 AND used_by IS NULL")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn set_used_by(db: &Db, id: &str, user_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE invitations SET used_by = $1 WHERE id = $2")
        .bind(user_id)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
