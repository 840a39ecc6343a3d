//! Submissions as students and staff look back on them: a student's attempts
//! at a lab, every attempt in a course (gradebook, leaderboard), and one
//! submission with the one before it (history and diff). A regrade's copies
//! are never attempts; once a regrade is accepted, its grade stands in for
//! the grade of the attempt it regraded.

use sqlx::FromRow;

use super::Db;
use crate::coursework::Attempt;

/// One attempt: the submission and its job.
#[derive(Clone, Debug, FromRow)]
pub struct AttemptRow {
    pub job_id: String,
    pub submission_id: String,
    pub user_id: String,
    pub lab_id: String,
    pub kind: String,
    pub created_at: i64,
    pub late_seconds: i64,
    pub penalty_pct: f64,
    pub state: String,
    pub points: Option<f64>,
    pub max_points: Option<f64>,
    pub metric: Option<f64>,
    pub public_metric: Option<f64>,
    pub message: String,
    pub enqueued_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub cpu_seconds: f64,
    pub gpu_seconds: f64,
    /// The job of the accepted regrade whose grade this attempt now carries.
    pub regraded_by: Option<String>,
}

impl AttemptRow {
    pub fn attempt(&self) -> Attempt {
        Attempt {
            job_id: self.job_id.clone(),
            submitted_at: self.created_at,
            state: self.state.clone(),
            points: self.points,
            max_points: self.max_points,
            penalty_pct: self.penalty_pct,
            late_seconds: self.late_seconds,
        }
    }
}

/// Attempts with the grade of an accepted regrade in place of their own (at
/// most one regrade of a lab is accepted at a time). Callers add their
/// conditions after `WHERE s.regrade_of IS NULL`.
const ATTEMPT: &str = "SELECT j.id AS job_id, s.id AS submission_id, s.user_id, s.lab_id, s.kind, s.created_at, \
    s.late_seconds, s.penalty_pct, \
    CASE WHEN rj.id IS NULL THEN j.state ELSE rj.state END AS state, \
    CASE WHEN rj.id IS NULL THEN j.points ELSE rj.points END AS points, \
    CASE WHEN rj.id IS NULL THEN j.max_points ELSE rj.max_points END AS max_points, \
    CASE WHEN rj.id IS NULL THEN j.metric ELSE rj.metric END AS metric, \
    CASE WHEN rj.id IS NULL THEN j.public_metric ELSE rj.public_metric END AS public_metric, \
    j.message, j.enqueued_ms, j.started_ms, j.finished_ms, j.cpu_seconds, j.gpu_seconds, rj.id AS regraded_by \
    FROM submissions s JOIN jobs j ON j.submission_id = s.id \
    LEFT JOIN submissions rs ON rs.regrade_of = s.id \
        AND rs.regrade_id IN (SELECT r.id FROM regrades r WHERE r.state = 'accepted') \
    LEFT JOIN jobs rj ON rj.submission_id = rs.id AND rj.state = 'done'";

/// A student's attempts at one lab, newest first.
pub async fn of_student(
    db: &Db,
    course_id: &str,
    lab_id: &str,
    user_id: &str,
) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(&format!(
        "{ATTEMPT} WHERE s.regrade_of IS NULL AND s.course_id = $1 AND s.lab_id = $2 AND s.user_id = $3 \
         ORDER BY s.created_at DESC, s.id DESC"
    ))
    .bind(course_id)
    .bind(lab_id)
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}

/// Every attempt in a course by its students (not staff), oldest first.
pub async fn of_course(db: &Db, course_id: &str) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(&format!(
        "{ATTEMPT} JOIN enrollments e ON e.course_id = s.course_id AND e.user_id = s.user_id \
         WHERE s.regrade_of IS NULL AND s.course_id = $1 AND e.role = 'student' ORDER BY s.created_at, s.id"
    ))
    .bind(course_id)
    .fetch_all(&db.pool)
    .await
}

/// Every attempt at one lab of a course by its students, oldest first.
pub async fn of_lab(db: &Db, course_id: &str, lab_id: &str) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(&format!(
        "{ATTEMPT} JOIN enrollments e ON e.course_id = s.course_id AND e.user_id = s.user_id \
         WHERE s.regrade_of IS NULL AND s.course_id = $1 AND s.lab_id = $2 AND e.role = 'student' \
         ORDER BY s.created_at, s.id"
    ))
    .bind(course_id)
    .bind(lab_id)
    .fetch_all(&db.pool)
    .await
}

/// A submission's content and the grader's report of its job.
#[derive(Clone, Debug, FromRow)]
pub struct Detail {
    pub submission_id: String,
    pub course_id: String,
    pub lab_id: String,
    pub user_id: String,
    pub kind: String,
    pub content: String,
    pub created_at: i64,
    pub late_seconds: i64,
    pub penalty_pct: f64,
    pub report: String,
}

/// The submission a job ran, with the job's report.
pub async fn detail_of_job(db: &Db, job_id: &str) -> sqlx::Result<Option<Detail>> {
    sqlx::query_as(
        "SELECT s.id AS submission_id, s.course_id, s.lab_id, s.user_id, s.kind, s.content, s.created_at, \
         s.late_seconds, s.penalty_pct, j.report FROM jobs j JOIN submissions s ON s.id = j.submission_id \
         WHERE j.id = $1",
    )
    .bind(job_id)
    .fetch_optional(&db.pool)
    .await
}

/// The same student's attempt at the same lab just before this one, as
/// `(job id, content)`.
pub async fn previous(db: &Db, d: &Detail) -> sqlx::Result<Option<(String, String)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT j.id, s.content FROM submissions s JOIN jobs j ON j.submission_id = s.id \
         WHERE s.course_id = $1 AND s.lab_id = $2 AND s.user_id = $3 AND s.regrade_of IS NULL \
         AND (s.created_at < $4 OR (s.created_at = $4 AND s.id < $5)) \
         ORDER BY s.created_at DESC, s.id DESC LIMIT 1",
    )
    .bind(&d.course_id)
    .bind(&d.lab_id)
    .bind(&d.user_id)
    .bind(d.created_at)
    .bind(&d.submission_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row)
}

/// The newest submission of a student to a lab (to start the editor from).
pub async fn latest_content(
    db: &Db,
    course_id: &str,
    lab_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT content FROM submissions WHERE course_id = $1 AND lab_id = $2 AND user_id = $3 \
         AND regrade_of IS NULL ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(course_id)
    .bind(lab_id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await
}

/// What a submission holds, for a regrade's copy of it.
#[derive(Clone, Debug, FromRow)]
pub struct Body {
    pub user_id: String,
    pub kind: String,
    pub content: String,
    pub late_seconds: i64,
    pub penalty_pct: f64,
}

pub async fn body(db: &Db, submission_id: &str) -> sqlx::Result<Option<Body>> {
    sqlx::query_as(
        "SELECT user_id, kind, content, late_seconds, penalty_pct FROM submissions WHERE id = $1",
    )
    .bind(submission_id)
    .fetch_optional(&db.pool)
    .await
}

/// How many of each lab version the given attempts ran against: (version,
/// package hash, count), for the instructor's regrade decision.
pub async fn versions_of_lab(
    db: &Db,
    course_id: &str,
    lab_id: &str,
) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT lab_version, lab_hash, COUNT(*) FROM submissions WHERE course_id = $1 AND lab_id = $2 \
         AND regrade_of IS NULL GROUP BY lab_version, lab_hash ORDER BY 3 DESC, 1",
    )
    .bind(course_id)
    .bind(lab_id)
    .fetch_all(&db.pool)
    .await
}
