//! Rows of uploaded files; the bytes are in `crate::files`' store.

use sqlx::FromRow;

use super::{new_id, now};

#[derive(Clone, Debug, FromRow)]
pub struct StoredFile {
    pub id: String,
    pub owner_id: Option<String>,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub created_at: i64,
}

/// Records a stored upload; returns its id.
#[tracing::instrument(skip_all)]
pub async fn insert<'e, E>(
    exec: E,
    owner_id: &str,
    upload: &crate::files::CheckedUpload,
) -> sqlx::Result<String>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let id = new_id();
    sqlx::query(
        "INSERT INTO stored_files (id, owner_id, name, content_type, size, sha256, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(owner_id)
    .bind(&upload.name)
    .bind(upload.content_type)
    .bind(upload.bytes.len() as i64)
    .bind(&upload.sha256)
    .bind(now())
    .execute(exec)
    .await?;
    Ok(id)
}

#[tracing::instrument(skip_all)]
pub async fn get(db: &super::Db, id: &str) -> sqlx::Result<Option<StoredFile>> {
    sqlx::query_as(
        "SELECT id, owner_id, name, content_type, size, sha256, created_at FROM stored_files WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}
