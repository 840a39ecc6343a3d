//! Organisations (universities and companies) and their members.

use sqlx::FromRow;

use super::{is_unique_violation, new_id, now, Db};
use crate::domain::{ConnectionState, OrgKind, OrgRole, Slug};

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

/// A company's standing with a university (level one of posting approval).
#[derive(Clone, Debug, FromRow)]
pub struct Connection {
    pub company_id: String,
    pub company_name: String,
    pub company_slug: String,
    pub university_id: String,
    pub university_name: String,
    pub university_slug: String,
    pub state: ConnectionState,
    pub message: String,
    pub requested_at: i64,
    pub decided_at: Option<i64>,
}

const CONNECTION_SELECT: &str =
    "SELECT c.company_id, co.name AS company_name, co.slug AS company_slug, \
     c.university_id, u.name AS university_name, u.slug AS university_slug, c.state, c.message, \
     c.requested_at, c.decided_at FROM org_connections c \
     JOIN organisations co ON co.id = c.company_id JOIN organisations u ON u.id = c.university_id";

/// A company asks to reach a university's students. Asking again after a
/// rejection or revocation starts a new request; an approved or pending
/// connection is left as it is (returns false).
#[tracing::instrument(skip_all)]
pub async fn request_connection(
    db: &Db,
    company_id: &str,
    university_id: &str,
    message: &str,
    by: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO org_connections (company_id, university_id, state, message, requested_by, requested_at) \
         VALUES ($1, $2, 'requested', $3, $4, $5) \
         ON CONFLICT (company_id, university_id) DO UPDATE SET state = 'requested', \
         message = excluded.message, requested_by = excluded.requested_by, \
         requested_at = excluded.requested_at, decided_by = NULL, decided_at = NULL \
         WHERE org_connections.state IN ('rejected', 'revoked')",
    )
    .bind(company_id)
    .bind(university_id)
    .bind(message)
    .bind(by)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A university admin decides on a connection. Only the moves
/// requested → approved | rejected and approved → revoked exist; returns
/// false (and changes nothing) for any other.
#[tracing::instrument(skip_all)]
pub async fn decide_connection(
    db: &Db,
    company_id: &str,
    university_id: &str,
    to: ConnectionState,
    by: &str,
) -> sqlx::Result<bool> {
    let from = match to {
        ConnectionState::Approved | ConnectionState::Rejected => ConnectionState::Requested,
        ConnectionState::Revoked => ConnectionState::Approved,
        ConnectionState::Requested => return Ok(false),
    };
    let r = sqlx::query(
        "UPDATE org_connections SET state = $1, decided_by = $2, decided_at = $3 \
         WHERE company_id = $4 AND university_id = $5 AND state = $6",
    )
    .bind(to.as_str())
    .bind(by)
    .bind(now())
    .bind(company_id)
    .bind(university_id)
    .bind(from.as_str())
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Every connection an organisation is part of (either side).
#[tracing::instrument(skip_all)]
pub async fn connections_of(db: &Db, org_id: &str) -> sqlx::Result<Vec<Connection>> {
    sqlx::query_as(&format!(
        "{CONNECTION_SELECT} WHERE c.company_id = $1 OR c.university_id = $1 \
         ORDER BY c.requested_at DESC"
    ))
    .bind(org_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn connection_state(
    db: &Db,
    company_id: &str,
    university_id: &str,
) -> sqlx::Result<Option<ConnectionState>> {
    sqlx::query_scalar(
        "SELECT state FROM org_connections WHERE company_id = $1 AND university_id = $2",
    )
    .bind(company_id)
    .bind(university_id)
    .fetch_optional(&db.pool)
    .await
}

/// Universities a company is approved to post to.
#[tracing::instrument(skip_all)]
pub async fn approved_universities(db: &Db, company_id: &str) -> sqlx::Result<Vec<Org>> {
    sqlx::query_as(
        "SELECT o.id, o.slug, o.name, o.kind, o.description, o.created_at FROM org_connections c \
         JOIN organisations o ON o.id = c.university_id \
         WHERE c.company_id = $1 AND c.state = 'approved' ORDER BY o.name",
    )
    .bind(company_id)
    .fetch_all(&db.pool)
    .await
}

/// Users who administer an organisation (they receive its notifications).
#[tracing::instrument(skip_all)]
pub async fn admin_ids(db: &Db, org_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT user_id FROM org_members WHERE org_id = $1 AND role = 'admin'")
        .bind(org_id)
        .fetch_all(&db.pool)
        .await
}

/// Members of an organisation, any role.
#[tracing::instrument(skip_all)]
pub async fn member_ids(db: &Db, org_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT user_id FROM org_members WHERE org_id = $1")
        .bind(org_id)
        .fetch_all(&db.pool)
        .await
}

/// The universities whose courses a user is enrolled in, or whose member
/// they are: the universities whose postings they may see.
#[tracing::instrument(skip_all)]
pub async fn universities_of(db: &Db, user_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT c.university_id FROM enrollments e JOIN courses c ON c.id = e.course_id \
         WHERE e.user_id = $1 \
         UNION SELECT m.org_id FROM org_members m JOIN organisations o ON o.id = m.org_id \
         WHERE m.user_id = $1 AND o.kind = 'university'",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}
