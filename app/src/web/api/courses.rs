//! `/api/v1` courses and rosters.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiErrorBody, ApiJson};
use crate::auth::{CourseCreator, CourseInstructor, CourseMember, CourseStaff, CurrentUser};
use crate::db::courses::{self as db_courses, Course, MyCourse, RosterEntry};
use crate::domain::{CourseRole, UserKind};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::web::courses::{add_ta_by_email, create_course, join_course, CourseForm};
use crate::web::templates::FormErrors;

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub kind: UserKind,
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/me", tag = "account",
    responses((status = 200, body = Me), (status = 401, body = ApiErrorBody)))]
pub async fn me(CurrentUser(user): CurrentUser) -> Json<Me> {
    Json(Me {
        id: user.id,
        email: user.email,
        display_name: user.display_name,
        kind: user.kind,
    })
}

/// The courses the caller is enrolled in, with their role.
#[utoipa::path(get, path = "/api/v1/courses", tag = "courses",
    responses((status = 200, body = Vec<MyCourse>), (status = 401, body = ApiErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> AppResult<Json<Vec<MyCourse>>> {
    Ok(Json(db_courses::of_user(&state.db, &user.id).await?))
}

#[derive(Deserialize, ToSchema)]
pub struct NewCourseBody {
    /// e.g. `AI501`: letters, digits, `-` and `.`.
    pub code: String,
    pub title: String,
    /// e.g. `2027-spring`.
    pub term: String,
    /// One of the caller's universities.
    pub university_id: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, ToSchema)]
pub struct CourseOut {
    #[serde(flatten)]
    pub course: Course,
    /// The caller's role (absent for a site admin who is not enrolled).
    pub role: Option<CourseRole>,
    /// Only shown to the course's staff.
    pub join_code: Option<String>,
}

fn course_out(course: Course, role: Option<CourseRole>, staff: bool) -> CourseOut {
    let join_code = staff.then(|| course.join_code.clone());
    CourseOut {
        course,
        role,
        join_code,
    }
}

fn validation(errors: FormErrors) -> AppError {
    AppError::Validation(errors.iter().collect())
}

/// Creates a course; the caller becomes its instructor.
#[utoipa::path(post, path = "/api/v1/courses", tag = "courses", request_body = NewCourseBody,
    responses((status = 201, body = CourseOut), (status = 403, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    CourseCreator(user): CourseCreator,
    ApiJson(body): ApiJson<NewCourseBody>,
) -> AppResult<(StatusCode, Json<CourseOut>)> {
    let form = CourseForm {
        code: body.code,
        title: body.title,
        term: body.term,
        university_id: body.university_id,
        description: body.description,
    };
    let mut errors = FormErrors::default();
    let id = create_course(&state, &user, &form, &mut errors)
        .await?
        .ok_or_else(|| validation(errors))?;
    let course = db_courses::by_id(&state.db, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok((
        StatusCode::CREATED,
        Json(course_out(course, Some(CourseRole::Instructor), true)),
    ))
}

/// One course the caller belongs to.
#[utoipa::path(get, path = "/api/v1/courses/{course_id}", tag = "courses",
    params(("course_id" = String, Path)),
    responses((status = 200, body = CourseOut), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn get(access: CourseMember) -> Json<CourseOut> {
    let staff = access.is_staff();
    Json(course_out(access.course, access.role, staff))
}

#[derive(Deserialize, ToSchema)]
pub struct JoinBody {
    pub join_code: String,
}

/// Joins a course as a student with its join code.
#[utoipa::path(post, path = "/api/v1/courses/join", tag = "courses", request_body = JoinBody,
    responses((status = 200, body = CourseOut), (status = 404, body = ApiErrorBody)))]
pub async fn join(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<JoinBody>,
) -> AppResult<Json<CourseOut>> {
    let course = join_course(&state, &user, &body.join_code)
        .await?
        .ok_or(AppError::BadRequest("join_code_invalid"))?;
    let role = db_courses::role_of(&state.db, &course.id, &user.id).await?;
    let staff = role.is_some_and(|r| r != CourseRole::Student);
    Ok(Json(course_out(course, role, staff)))
}

#[derive(Serialize, ToSchema)]
pub struct JoinCodeOut {
    pub join_code: String,
}

/// Replaces the join code; the old one stops working.
#[utoipa::path(post, path = "/api/v1/courses/{course_id}/join-code", tag = "courses",
    params(("course_id" = String, Path)),
    responses((status = 200, body = JoinCodeOut), (status = 403, body = ApiErrorBody)))]
pub async fn regenerate_join_code(
    State(state): State<AppState>,
    access: CourseInstructor,
) -> AppResult<Json<JoinCodeOut>> {
    let join_code = db_courses::regenerate_join_code(&state.db, &access.course.id).await?;
    Ok(Json(JoinCodeOut { join_code }))
}

/// The course roster (staff only).
#[utoipa::path(get, path = "/api/v1/courses/{course_id}/roster", tag = "courses",
    params(("course_id" = String, Path)),
    responses((status = 200, body = Vec<RosterEntry>), (status = 403, body = ApiErrorBody)))]
pub async fn roster(
    State(state): State<AppState>,
    access: CourseStaff,
) -> AppResult<Json<Vec<RosterEntry>>> {
    Ok(Json(
        db_courses::roster(&state.db, &access.course.id).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct TaBody {
    pub email: String,
}

/// Makes an existing account a TA of the course.
#[utoipa::path(post, path = "/api/v1/courses/{course_id}/roster/tas", tag = "courses",
    params(("course_id" = String, Path)), request_body = TaBody,
    responses((status = 204), (status = 403, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn add_ta(
    State(state): State<AppState>,
    access: CourseInstructor,
    ApiJson(body): ApiJson<TaBody>,
) -> AppResult<StatusCode> {
    add_ta_by_email(&state, &access.course.id, &body.email)
        .await?
        .map_err(|key| AppError::Validation(vec![("email", key)]))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a TA or a student from the course (instructors cannot be removed here).
#[utoipa::path(delete, path = "/api/v1/courses/{course_id}/roster/{user_id}", tag = "courses",
    params(("course_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    access: CourseInstructor,
    Path(ids): Path<(String, String)>,
) -> AppResult<StatusCode> {
    let user_id = ids.1;
    let removed = db_courses::unenroll(&state.db, &access.course.id, &user_id, CourseRole::Ta)
        .await?
        || db_courses::unenroll(&state.db, &access.course.id, &user_id, CourseRole::Student)
            .await?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound)
    }
}
