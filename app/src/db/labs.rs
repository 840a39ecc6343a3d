//! Which labs a course offers, with their dates, late rules, limits and
//! points, and per-student extensions.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::{now, Db};

/// After the deadline: refuse, or accept with a penalty per started day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// No submissions after the deadline.
    None,
    /// Accepted for `late_days` days, each started day costing `late_penalty_pct` percent.
    Penalty,
}

/// Which graded attempt counts in the gradebook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    Best,
    Last,
}

/// When students see the private leaderboard scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrivateScores {
    AfterDeadline,
    Released,
    Hidden,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)+ _ => None }
            }
        }
    };
}
text_enum!(LatePolicy { None => "none", Penalty => "penalty" });
text_enum!(Counts { Best => "best", Last => "last" });
text_enum!(PrivateScores { AfterDeadline => "after_deadline", Released => "released", Hidden => "hidden" });

/// How a course runs one lab. Times are unix seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LabSettings {
    /// When students can see and submit the lab (`None`: at once).
    pub release_at: Option<i64>,
    /// Deadline (`None`: none). Jobs of labs due soon run first.
    pub due_at: Option<i64>,
    pub late_policy: LatePolicy,
    /// Percent of the points lost per started day late (penalty policy).
    pub late_penalty_pct: f64,
    /// Days after the deadline that late submissions are accepted (penalty policy).
    pub late_days: i64,
    /// Attempts in all (`None`: no limit).
    pub max_attempts: Option<i64>,
    /// Attempts in any 24 hours (`None`: no limit).
    pub max_per_day: Option<i64>,
    /// Points in the gradebook (`None`: the lab's own points).
    pub points: Option<f64>,
    pub counts: Counts,
    pub private_scores: PrivateScores,
}

impl Default for LabSettings {
    fn default() -> Self {
        LabSettings {
            release_at: None,
            due_at: None,
            late_policy: LatePolicy::None,
            late_penalty_pct: 0.0,
            late_days: 0,
            max_attempts: None,
            max_per_day: None,
            points: None,
            counts: Counts::Best,
            private_scores: PrivateScores::AfterDeadline,
        }
    }
}

/// A lab of a course and how the course runs it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CourseLab {
    pub course_id: String,
    pub lab_id: String,
    pub added_at: i64,
    #[serde(flatten)]
    pub settings: LabSettings,
}

impl CourseLab {
    /// Whether students can see it at `now`.
    pub fn is_released(&self, now: i64) -> bool {
        self.settings.release_at.is_none_or(|r| r <= now)
    }
}

#[derive(FromRow)]
struct CourseLabRow {
    course_id: String,
    lab_id: String,
    added_at: i64,
    release_at: Option<i64>,
    due_at: Option<i64>,
    late_policy: String,
    late_penalty_pct: f64,
    late_days: i64,
    max_attempts: Option<i64>,
    max_per_day: Option<i64>,
    points: Option<f64>,
    counts: String,
    private_scores: String,
}

impl From<CourseLabRow> for CourseLab {
    fn from(r: CourseLabRow) -> Self {
        // The CHECK constraints keep the text columns to these values.
        CourseLab {
            course_id: r.course_id,
            lab_id: r.lab_id,
            added_at: r.added_at,
            settings: LabSettings {
                release_at: r.release_at,
                due_at: r.due_at,
                late_policy: LatePolicy::parse(&r.late_policy).unwrap_or(LatePolicy::None),
                late_penalty_pct: r.late_penalty_pct,
                late_days: r.late_days,
                max_attempts: r.max_attempts,
                max_per_day: r.max_per_day,
                points: r.points,
                counts: Counts::parse(&r.counts).unwrap_or(Counts::Best),
                private_scores: PrivateScores::parse(&r.private_scores)
                    .unwrap_or(PrivateScores::AfterDeadline),
            },
        }
    }
}

const COLUMNS: &str =
    "course_id, lab_id, added_at, release_at, due_at, late_policy, late_penalty_pct, \
    late_days, max_attempts, max_per_day, points, counts, private_scores";

/// Offers a lab in a course with these settings, or changes its settings.
#[tracing::instrument(skip_all)]
pub async fn put(db: &Db, course_id: &str, lab_id: &str, s: &LabSettings) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO course_labs (course_id, lab_id, added_at, release_at, due_at, late_policy, late_penalty_pct, \
         late_days, max_attempts, max_per_day, points, counts, private_scores) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (course_id, lab_id) DO UPDATE SET release_at = excluded.release_at, \
         due_at = excluded.due_at, late_policy = excluded.late_policy, \
         late_penalty_pct = excluded.late_penalty_pct, late_days = excluded.late_days, \
         max_attempts = excluded.max_attempts, max_per_day = excluded.max_per_day, \
         points = excluded.points, counts = excluded.counts, private_scores = excluded.private_scores",
    )
    .bind(course_id)
    .bind(lab_id)
    .bind(now())
    .bind(s.release_at)
    .bind(s.due_at)
    .bind(s.late_policy.as_str())
    .bind(s.late_penalty_pct)
    .bind(s.late_days)
    .bind(s.max_attempts)
    .bind(s.max_per_day)
    .bind(s.points)
    .bind(s.counts.as_str())
    .bind(s.private_scores.as_str())
    // Not cached: sqlx 0.8's `Any` driver sends a `None` f64 to PostgreSQL as
    // a float4 NULL, so a statement prepared with one would reject a later
    // f64 on the same connection ("incorrect binary data format").
    .persistent(false)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Offers a lab with the default settings and this deadline (or changes only
/// its deadline).
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
    let row: Option<CourseLabRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM course_labs WHERE course_id = $1 AND lab_id = $2"
    ))
    .bind(course_id)
    .bind(lab_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(CourseLab::from))
}

/// A lab of a course with the extended deadline of one student, if any, in
/// one query (the lab page needs both).
pub async fn get_for(
    db: &Db,
    course_id: &str,
    lab_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<(CourseLab, Option<i64>)>> {
    #[derive(FromRow)]
    struct WithExtension {
        #[sqlx(flatten)]
        lab: CourseLabRow,
        extended_due: Option<i64>,
    }
    let row: Option<WithExtension> = sqlx::query_as(&format!(
        "SELECT {}, x.due_at AS extended_due FROM course_labs cl LEFT JOIN lab_extensions x \
         ON x.course_id = cl.course_id AND x.lab_id = cl.lab_id AND x.user_id = $3 \
         WHERE cl.course_id = $1 AND cl.lab_id = $2",
        prefixed("cl")
    ))
    .bind(course_id)
    .bind(lab_id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|r| (CourseLab::from(r.lab), r.extended_due)))
}

/// [`COLUMNS`] qualified by a table alias.
fn prefixed(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn of_course(db: &Db, course_id: &str) -> sqlx::Result<Vec<CourseLab>> {
    let rows: Vec<CourseLabRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM course_labs WHERE course_id = $1 ORDER BY due_at IS NULL, due_at, added_at, lab_id"
    ))
    .bind(course_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(CourseLab::from).collect())
}

/// A later deadline for one student.
#[derive(Clone, Debug, FromRow, Serialize, utoipa::ToSchema)]
pub struct Extension {
    pub user_id: String,
    pub display_name: String,
    pub email: String,
    pub due_at: i64,
    pub granted_at: i64,
}

/// Grants (or changes) a student's extension.
#[tracing::instrument(skip_all)]
pub async fn grant_extension(
    db: &Db,
    course_id: &str,
    lab_id: &str,
    user_id: &str,
    due_at: i64,
    granted_by: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO lab_extensions (course_id, lab_id, user_id, due_at, granted_by, granted_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (course_id, lab_id, user_id) \
         DO UPDATE SET due_at = excluded.due_at, granted_by = excluded.granted_by, granted_at = excluded.granted_at",
    )
    .bind(course_id)
    .bind(lab_id)
    .bind(user_id)
    .bind(due_at)
    .bind(granted_by)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Removes a student's extension; `false` when there was none.
pub async fn revoke_extension(
    db: &Db,
    course_id: &str,
    lab_id: &str,
    user_id: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "DELETE FROM lab_extensions WHERE course_id = $1 AND lab_id = $2 AND user_id = $3",
    )
    .bind(course_id)
    .bind(lab_id)
    .bind(user_id)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn extensions(db: &Db, course_id: &str, lab_id: &str) -> sqlx::Result<Vec<Extension>> {
    sqlx::query_as(
        "SELECT e.user_id, u.display_name, u.email, e.due_at, e.granted_at FROM lab_extensions e \
         JOIN users u ON u.id = e.user_id WHERE e.course_id = $1 AND e.lab_id = $2 ORDER BY u.display_name",
    )
    .bind(course_id)
    .bind(lab_id)
    .fetch_all(&db.pool)
    .await
}

/// The deadline that applies to one student: their extension, or the lab's.
pub async fn due_for(db: &Db, lab: &CourseLab, user_id: &str) -> sqlx::Result<Option<i64>> {
    let ext: Option<i64> = sqlx::query_scalar(
        "SELECT due_at FROM lab_extensions WHERE course_id = $1 AND lab_id = $2 AND user_id = $3",
    )
    .bind(&lab.course_id)
    .bind(&lab.lab_id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(ext.or(lab.settings.due_at))
}

/// A lab a student has to do: released, in one of their courses, due after
/// `since` (their extension counts).
#[derive(Clone, Debug, FromRow)]
pub struct DueLab {
    pub course_id: String,
    pub course_code: String,
    pub lab_id: String,
    pub due_at: i64,
}

/// The labs due after `since` in the courses where `user_id` is a student,
/// soonest first.
pub async fn due_for_student(
    db: &Db,
    user_id: &str,
    since: i64,
    limit: i64,
) -> sqlx::Result<Vec<DueLab>> {
    sqlx::query_as(
        "SELECT cl.course_id, c.code AS course_code, cl.lab_id, COALESCE(x.due_at, cl.due_at) AS due_at \
         FROM course_labs cl JOIN enrollments e ON e.course_id = cl.course_id AND e.user_id = $1 AND e.role = 'student' \
         JOIN courses c ON c.id = cl.course_id \
         LEFT JOIN lab_extensions x ON x.course_id = cl.course_id AND x.lab_id = cl.lab_id AND x.user_id = $1 \
         WHERE COALESCE(x.due_at, cl.due_at) > $2 AND (cl.release_at IS NULL OR cl.release_at <= $2) \
         ORDER BY 4, cl.lab_id LIMIT $3",
    )
    .bind(user_id)
    .bind(since)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}
