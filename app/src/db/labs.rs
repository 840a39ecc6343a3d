//! Which labs a course offers.

use sqlx::FromRow;

use super::{now, Db};

#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct CourseLab {
    pub course_id: String,
    pub lab_id: String,
    /// Deadline (unix seconds), if any.
    pub due_at: Option<i64>,
    pub added_at: i64,
}

/// Offers a lab in a course (or updates its deadline).
#[tracing::instrument(skip_all)]
pub async fn add(db: &Db, course_id: &str, lab_id: &str, due_at: Option<i64>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO course_labs (course_id, lab_id, due_at, added_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (course_id, lab_id) DO UPDATE SET due_at = excluded.due_at",
    )
    .bind(course_id)
    .bind(lab_id)
    .bind(due_at)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn get(db: &Db, course_id: &str, lab_id: &str) -> sqlx::Result<Option<CourseLab>> {
    sqlx::query_as(
        "SELECT course_id, lab_id, due_at, added_at FROM course_labs WHERE course_id = $1 AND lab_id = $2",
    )
    .bind(course_id)
    .bind(lab_id)
    .fetch_optional(&db.pool)
    .await
}

pub async fn of_course(db: &Db, course_id: &str) -> sqlx::Result<Vec<CourseLab>> {
    sqlx::query_as(
        "SELECT course_id, lab_id, due_at, added_at FROM course_labs WHERE course_id = $1 ORDER BY added_at, lab_id",
    )
    .bind(course_id)
    .fetch_all(&db.pool)
    .await
}
