//! In-app notifications: a message, a local link, and whether it was read.

use sqlx::FromRow;

use super::{new_id, now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct Notification {
    pub id: String,
    pub message: String,
    pub link: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

/// Notifies each user once (duplicates in `user_ids` are skipped); `link`
/// must be a local path.
#[tracing::instrument(skip_all)]
pub async fn notify<'e, E>(
    exec: E,
    user_ids: &[String],
    message: &str,
    link: &str,
) -> sqlx::Result<()>
where
    E: sqlx::Acquire<'e, Database = sqlx::Any>,
{
    let mut conn = exec.acquire().await?;
    let at = now();
    let mut seen: Vec<&String> = Vec::new();
    for user_id in user_ids {
        if seen.contains(&user_id) {
            continue;
        }
        seen.push(user_id);
        sqlx::query(
            "INSERT INTO notifications (id, user_id, message, link, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(message)
        .bind(link)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn unread_count(db: &Db, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL")
        .bind(user_id)
        .fetch_one(&db.pool)
        .await
}

/// The latest notifications, newest first.
#[tracing::instrument(skip_all)]
pub async fn recent(db: &Db, user_id: &str, limit: i64) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as(
        "SELECT id, message, link, created_at, read_at FROM notifications WHERE user_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Marks one of the user's notifications read and returns its link.
#[tracing::instrument(skip_all)]
pub async fn open(db: &Db, user_id: &str, id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query(
        "UPDATE notifications SET read_at = $1 WHERE id = $2 AND user_id = $3 AND read_at IS NULL",
    )
    .bind(now())
    .bind(id)
    .bind(user_id)
    .execute(&db.pool)
    .await?;
    sqlx::query_scalar("SELECT link FROM notifications WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await
}

#[tracing::instrument(skip_all)]
pub async fn mark_all_read(db: &Db, user_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL")
        .bind(now())
        .bind(user_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
