//! Regrades of a lab in a course: every counted submission requeued against
//! a newer version of the lab, its results kept beside the old ones until an
//! instructor accepts (or discards) them.

use sqlx::FromRow;

use super::{new_id, now, Db};

#[derive(Clone, Debug, FromRow)]
pub struct Regrade {
    pub id: String,
    pub course_id: String,
    pub lab_id: String,
    pub lab_version: String,
    pub lab_hash: String,
    pub created_at: i64,
    pub state: String,
    pub decided_at: Option<i64>,
}

const COLUMNS: &str = "id, course_id, lab_id, lab_version, lab_hash, created_at, state, decided_at";

/// Records a new regrade (its jobs are submitted separately).
pub async fn create(
    db: &Db,
    course_id: &str,
    lab_id: &str,
    lab_version: &str,
    lab_hash: &str,
    created_by: &str,
) -> sqlx::Result<String> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO regrades (id, course_id, lab_id, lab_version, lab_hash, created_by, created_at, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'running')",
    )
    .bind(&id)
    .bind(course_id)
    .bind(lab_id)
    .bind(lab_version)
    .bind(lab_hash)
    .bind(created_by)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(id)
}

pub async fn get(db: &Db, course_id: &str, id: &str) -> sqlx::Result<Option<Regrade>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM regrades WHERE id = $1 AND course_id = $2"
    ))
    .bind(id)
    .bind(course_id)
    .fetch_optional(&db.pool)
    .await
}

/// The regrades of a lab in a course, newest first.
pub async fn of_lab(db: &Db, course_id: &str, lab_id: &str) -> sqlx::Result<Vec<Regrade>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM regrades WHERE course_id = $1 AND lab_id = $2 ORDER BY created_at DESC, id DESC"
    ))
    .bind(course_id)
    .bind(lab_id)
    .fetch_all(&db.pool)
    .await
}

/// One regraded submission: the old grade beside the new.
#[derive(Clone, Debug, FromRow)]
pub struct Pair {
    pub user_id: String,
    pub display_name: String,
    pub original_job: String,
    pub old_state: String,
    pub old_points: Option<f64>,
    pub old_max: Option<f64>,
    pub penalty_pct: f64,
    pub new_job: String,
    pub new_state: String,
    pub new_points: Option<f64>,
    pub new_max: Option<f64>,
}

pub async fn pairs(db: &Db, regrade_id: &str) -> sqlx::Result<Vec<Pair>> {
    sqlx::query_as(
        "SELECT s.user_id, u.display_name, oj.id AS original_job, oj.state AS old_state, oj.points AS old_points, \
         oj.max_points AS old_max, s.penalty_pct, nj.id AS new_job, nj.state AS new_state, \
         nj.points AS new_points, nj.max_points AS new_max \
         FROM submissions s JOIN jobs nj ON nj.submission_id = s.id \
         JOIN jobs oj ON oj.submission_id = s.regrade_of \
         JOIN users u ON u.id = s.user_id \
         WHERE s.regrade_id = $1 ORDER BY u.display_name, s.user_id",
    )
    .bind(regrade_id)
    .fetch_all(&db.pool)
    .await
}

/// Accepts a running regrade: its grades stand in for the old ones, and an
/// earlier accepted regrade of the lab is superseded. `false` when it is not
/// running.
pub async fn accept(db: &Db, r: &Regrade) -> sqlx::Result<bool> {
    let mut tx = db.begin_write().await?;
    let at = now();
    let done = sqlx::query(
        "UPDATE regrades SET state = 'accepted', decided_at = $1 WHERE id = $2 AND state = 'running'",
    )
    .bind(at)
    .bind(&r.id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "UPDATE regrades SET state = 'superseded' WHERE course_id = $1 AND lab_id = $2 \
         AND state = 'accepted' AND id <> $3",
    )
    .bind(&r.course_id)
    .bind(&r.lab_id)
    .bind(&r.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Discards a running regrade and cancels its unfinished jobs; the old
/// grades stay. `false` when it is not running.
pub async fn discard(db: &Db, r: &Regrade) -> sqlx::Result<bool> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query(
        "UPDATE regrades SET state = 'discarded', decided_at = $1 WHERE id = $2 AND state = 'running'",
    )
    .bind(now())
    .bind(&r.id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    // As a cancel: running jobs stop at their runner's next heartbeat.
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', outcome = 'cancelled', cancel_requested = 1, lease = NULL, \
         lease_expires_ms = NULL, finished_ms = $1, message = 'the regrade was discarded' \
         WHERE state IN ('queued', 'leased', 'running', 'grading') \
         AND submission_id IN (SELECT id FROM submissions WHERE regrade_id = $2)",
    )
    .bind(super::jobs::now_ms())
    .bind(&r.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
