//! Organisations (universities and companies) and their members.

use sqlx::FromRow;

use super::{is_unique_violation, new_id, now, Db};
use crate::domain::{OrgKind, OrgRole, Slug};

#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Org {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub kind: OrgKind,
    pub description: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, FromRow)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: OrgRole,
}

#[derive(Clone, Debug, FromRow)]
pub struct Membership {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub kind: OrgKind,
    pub role: OrgRole,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateOrgError {
    #[error("an organisation with this slug already exists")]
    DuplicateSlug,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "id, slug, name, kind, description, created_at";

#[tracing::instrument(skip_all)]
pub async fn create(
    db: &Db,
    slug: &Slug,
    name: &str,
    kind: OrgKind,
    description: &str,
) -> Result<Org, CreateOrgError> {
    let org = Org {
        id: new_id(),
        slug: slug.as_str().to_owned(),
        name: name.to_owned(),
        kind,
        description: description.to_owned(),
        created_at: now(),
    };
    let result = sqlx::query(
        "INSERT INTO organisations (id, slug, name, kind, description, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&org.id)
    .bind(&org.slug)
    .bind(&org.name)
    .bind(org.kind.as_str())
    .bind(&org.description)
    .bind(org.created_at)
    .execute(&db.pool)
    .await;
    match result {
        Ok(_) => Ok(org),
        Err(e) if is_unique_violation(&e) => Err(CreateOrgError::DuplicateSlug),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all)]
pub async fn by_slug(db: &Db, slug: &str) -> sqlx::Result<Option<Org>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM organisations WHERE slug = $1"
    ))
    .bind(slug)
    .fetch_optional(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn by_id(db: &Db, id: &str) -> sqlx::Result<Option<Org>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM organisations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list(db: &Db) -> sqlx::Result<Vec<Org>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM organisations ORDER BY kind, name"
    ))
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn members(db: &Db, org_id: &str) -> sqlx::Result<Vec<Member>> {
    sqlx::query_as(
        "SELECT u.id AS user_id, u.email, u.display_name, m.role FROM org_members m \
         JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY m.role, u.display_name",
    )
    .bind(org_id)
    .fetch_all(&db.pool)
    .await
}

/// Adds a member, or changes the role of an existing one.
#[tracing::instrument(skip_all)]
pub async fn set_member(db: &Db, org_id: &str, user_id: &str, role: OrgRole) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO org_members (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
    )
    .bind(org_id)
    .bind(user_id)
    .bind(role.as_str())
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn remove_member(db: &Db, org_id: &str, user_id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[tracing::instrument(skip_all)]
pub async fn role_of(db: &Db, org_id: &str, user_id: &str) -> sqlx::Result<Option<OrgRole>> {
    sqlx::query_scalar("SELECT role FROM org_members WHERE org_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await
}

/// The organisations a user belongs to, with their role in each.
#[tracing::instrument(skip_all)]
pub async fn of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<Membership>> {
    sqlx::query_as(
        "SELECT o.id, o.slug, o.name, o.kind, m.role FROM org_members m \
         JOIN organisations o ON o.id = m.org_id WHERE m.user_id = $1 ORDER BY o.name",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}
