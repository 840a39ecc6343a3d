//! Courses, join codes and enrollments.

use sqlx::FromRow;

use super::{is_unique_violation, new_id, now, Db};
use crate::domain::{CourseCode, CourseRole, JoinCode};

#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Course {
    pub id: String,
    pub code: String,
    pub title: String,
    pub term: String,
    pub university_id: String,
    pub university_name: String,
    pub description: String,
    #[serde(skip)]
    pub join_code: String,
    pub created_at: i64,
}

/// A course as seen from one user, with their role in it.
#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct MyCourse {
    pub id: String,
    pub code: String,
    pub title: String,
    pub term: String,
    pub university_name: String,
    pub role: CourseRole,
}

#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct RosterEntry {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: CourseRole,
    /// When the person joined the course (unix seconds).
    pub joined_at: i64,
}

pub struct NewCourse<'a> {
    pub code: &'a CourseCode,
    pub title: &'a str,
    pub term: &'a str,
    pub university_id: &'a str,
    pub description: &'a str,
    pub instructor_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateCourseError {
    #[error("this university already has a course with this code in this term")]
    Duplicate,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "c.id, c.code, c.title, c.term, c.university_id, o.name AS university_name, \
                       c.description, c.join_code, c.created_at";

/// Creates a course and enrolls its creator as instructor, atomically.
#[tracing::instrument(skip_all)]
pub async fn create(db: &Db, new: NewCourse<'_>) -> Result<String, CreateCourseError> {
    let id = new_id();
    let at = now();
    let mut tx = db.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO courses (id, code, title, term, university_id, description, join_code, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(new.code.as_str())
    .bind(new.title)
    .bind(new.term)
    .bind(new.university_id)
    .bind(new.description)
    .bind(JoinCode::generate())
    .bind(new.instructor_id)
    .bind(at)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(CreateCourseError::Duplicate),
        Err(e) => return Err(e.into()),
    }
    sqlx::query(
        "INSERT INTO enrollments (course_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(new.instructor_id)
    .bind(CourseRole::Instructor.as_str())
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

#[tracing::instrument(skip_all)]
pub async fn by_id(db: &Db, id: &str) -> sqlx::Result<Option<Course>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM courses c JOIN organisations o ON o.id = c.university_id WHERE c.id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

#[derive(FromRow)]
struct CourseWithRole {
    #[sqlx(flatten)]
    course: Course,
    role: Option<CourseRole>,
}

/// A course and the user's role in it (`None`: not enrolled), in one query:
/// every course page asks both.
#[tracing::instrument(skip_all)]
pub async fn with_role(
    db: &Db,
    id: &str,
    user_id: &str,
) -> sqlx::Result<Option<(Course, Option<CourseRole>)>> {
    let row: Option<CourseWithRole> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, e.role FROM courses c JOIN organisations o ON o.id = c.university_id \
         LEFT JOIN enrollments e ON e.course_id = c.id AND e.user_id = $2 WHERE c.id = $1"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|r| (r.course, r.role)))
}

#[tracing::instrument(skip_all)]
pub async fn by_join_code(db: &Db, code: &str) -> sqlx::Result<Option<Course>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM courses c JOIN organisations o ON o.id = c.university_id WHERE c.join_code = $1"
    ))
    .bind(code)
    .fetch_optional(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn find_by_code_term(
    db: &Db,
    university_id: &str,
    code: &str,
    term: &str,
) -> sqlx::Result<Option<Course>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM courses c JOIN organisations o ON o.id = c.university_id \
         WHERE c.university_id = $1 AND c.code = $2 AND c.term = $3"
    ))
    .bind(university_id)
    .bind(code)
    .bind(term)
    .fetch_optional(&db.pool)
    .await
}

/// Every course, newest first (for site admins).
#[tracing::instrument(skip_all)]
pub async fn list_all(db: &Db) -> sqlx::Result<Vec<Course>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM courses c JOIN organisations o ON o.id = c.university_id \
         ORDER BY c.created_at DESC"
    ))
    .fetch_all(&db.pool)
    .await
}

/// Replaces the join code; the old one stops working at once.
#[tracing::instrument(skip_all)]
pub async fn regenerate_join_code(db: &Db, course_id: &str) -> sqlx::Result<String> {
    let code = JoinCode::generate();
    sqlx::query("UPDATE courses SET join_code = $1 WHERE id = $2")
        .bind(&code)
        .bind(course_id)
        .execute(&db.pool)
        .await?;
    Ok(code)
}

#[tracing::instrument(skip_all)]
pub async fn role_of(db: &Db, course_id: &str, user_id: &str) -> sqlx::Result<Option<CourseRole>> {
    sqlx::query_scalar("SELECT role FROM enrollments WHERE course_id = $1 AND user_id = $2")
        .bind(course_id)
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await
}

/// Enrolls a user with a role unless already enrolled; returns the role they have afterwards.
#[tracing::instrument(skip_all)]
pub async fn enroll(
    db: &Db,
    course_id: &str,
    user_id: &str,
    role: CourseRole,
) -> sqlx::Result<CourseRole> {
    sqlx::query(
        "INSERT INTO enrollments (course_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (course_id, user_id) DO NOTHING",
    )
    .bind(course_id)
    .bind(user_id)
    .bind(role.as_str())
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(role_of(db, course_id, user_id).await?.unwrap_or(role))
}

/// Sets the role of an enrolled user.
#[tracing::instrument(skip_all)]
pub async fn set_role(
    db: &Db,
    course_id: &str,
    user_id: &str,
    role: CourseRole,
) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE enrollments SET role = $1 WHERE course_id = $2 AND user_id = $3")
        .bind(role.as_str())
        .bind(course_id)
        .bind(user_id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes an enrollment with the given role; returns whether one was removed.
#[tracing::instrument(skip_all)]
pub async fn unenroll(
    db: &Db,
    course_id: &str,
    user_id: &str,
    role: CourseRole,
) -> sqlx::Result<bool> {
    let r =
        sqlx::query("DELETE FROM enrollments WHERE course_id = $1 AND user_id = $2 AND role = $3")
            .bind(course_id)
            .bind(user_id)
            .bind(role.as_str())
            .execute(&db.pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

#[tracing::instrument(skip_all)]
pub async fn roster(db: &Db, course_id: &str) -> sqlx::Result<Vec<RosterEntry>> {
    sqlx::query_as(
        "SELECT u.id AS user_id, u.email, u.display_name, e.role, e.created_at AS joined_at \
         FROM enrollments e JOIN users u ON u.id = e.user_id WHERE e.course_id = $1 \
         ORDER BY CASE e.role WHEN 'instructor' THEN 0 WHEN 'ta' THEN 1 ELSE 2 END, u.display_name, u.email",
    )
    .bind(course_id)
    .fetch_all(&db.pool)
    .await
}

/// The courses a user is enrolled in, with their role, newest term first.
#[tracing::instrument(skip_all)]
pub async fn of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<MyCourse>> {
    sqlx::query_as(
        "SELECT c.id, c.code, c.title, c.term, o.name AS university_name, e.role \
         FROM enrollments e JOIN courses c ON c.id = e.course_id \
         JOIN organisations o ON o.id = c.university_id \
         WHERE e.user_id = $1 ORDER BY c.term DESC, c.code",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}

/// Each student's chosen leaderboard name in a course (`None`: anonymous).
pub async fn leaderboard_names(
    db: &Db,
    course_id: &str,
) -> sqlx::Result<Vec<(String, Option<String>)>> {
    sqlx::query_as(
        "SELECT user_id, leaderboard_name FROM enrollments WHERE course_id = $1 AND role = 'student'",
    )
    .bind(course_id)
    .fetch_all(&db.pool)
    .await
}

/// Sets (or clears, for anonymity) a student's leaderboard name.
pub async fn set_leaderboard_name(
    db: &Db,
    course_id: &str,
    user_id: &str,
    name: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE enrollments SET leaderboard_name = $1 WHERE course_id = $2 AND user_id = $3",
    )
    .bind(name)
    .bind(course_id)
    .bind(user_id)
    .execute(&db.pool)
    .await?;
    Ok(())
}
