//! `/api/v1` labs of a course, submissions and their jobs: submit a recipe or
//! code, follow the job (state, queue position, events), cancel it.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiErrorBody, ApiJson};
use crate::auth::{CourseInstructor, CourseMember, CurrentUser};
use crate::coursework::{self, Content};
use crate::db::courses;
use crate::db::jobs::{self, JobView};
use crate::db::labs::{self as db_labs, Counts, CourseLab, LabSettings, LatePolicy, PrivateScores};
use crate::domain::CourseRole;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The labs a course offers. Students see only released ones.
#[utoipa::path(get, path = "/api/v1/courses/{course_id}/labs", tag = "labs",
    params(("course_id" = String, Path)),
    responses((status = 200, body = Vec<CourseLab>), (status = 403, body = ApiErrorBody)))]
pub async fn course_labs(
    State(state): State<AppState>,
    access: CourseMember,
) -> AppResult<Json<Vec<CourseLab>>> {
    let now = crate::db::now();
    let staff = access.is_staff();
    Ok(Json(
        db_labs::of_course(&state.db, &access.course.id)
            .await?
            .into_iter()
            .filter(|l| staff || l.is_released(now))
            .collect(),
    ))
}

/// Offer a lab package in the course (instructors), or change how the course
/// runs it. Every setting left out takes its default.
#[utoipa::path(put, path = "/api/v1/courses/{course_id}/labs/{lab_id}", tag = "labs",
    params(("course_id" = String, Path), ("lab_id" = String, Path)),
    request_body = LabSettingsBody,
    responses((status = 200, body = CourseLab), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn offer_lab(
    State(state): State<AppState>,
    access: CourseInstructor,
    Path(path): Path<(String, String)>,
    ApiJson(body): ApiJson<LabSettingsBody>,
) -> AppResult<Json<CourseLab>> {
    let lab_id = path.1;
    if state.queue.catalog.get(&lab_id).is_none() {
        return Err(AppError::NotFound);
    }
    let settings = body.validate().map_err(AppError::Unprocessable)?;
    db_labs::put(&state.db, &access.course.id, &lab_id, &settings).await?;
    db_labs::get(&state.db, &access.course.id, &lab_id)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound)
}

/// How a course runs a lab; see [`LabSettings`]. Times are unix seconds.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LabSettingsBody {
    pub release_at: Option<i64>,
    pub due_at: Option<i64>,
    pub late_policy: Option<LatePolicy>,
    pub late_penalty_pct: Option<f64>,
    pub late_days: Option<i64>,
    pub max_attempts: Option<i64>,
    pub max_per_day: Option<i64>,
    pub points: Option<f64>,
    pub counts: Option<Counts>,
    pub private_scores: Option<PrivateScores>,
}

impl LabSettingsBody {
    pub fn validate(self) -> Result<LabSettings, String> {
        let d = LabSettings::default();
        let s = LabSettings {
            release_at: self.release_at,
            due_at: self.due_at,
            late_policy: self.late_policy.unwrap_or(d.late_policy),
            late_penalty_pct: self.late_penalty_pct.unwrap_or(d.late_penalty_pct),
            late_days: self.late_days.unwrap_or(d.late_days),
            max_attempts: self.max_attempts,
            max_per_day: self.max_per_day,
            points: self.points,
            counts: self.counts.unwrap_or(d.counts),
            private_scores: self.private_scores.unwrap_or(d.private_scores),
        };
        coursework::check_settings(&s)?;
        Ok(s)
    }
}

/// A submission: exactly one of `recipe` (TOML, recipe labs) or `code` (Rust, code labs).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    pub recipe: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Submitted {
    pub submission_id: String,
    pub job_id: String,
    pub state: String,
    /// Jobs ahead of this one.
    pub queue_position: i64,
    /// Seconds after the deadline (0: on time).
    pub late_seconds: i64,
    /// Late penalty in percent of the points.
    pub penalty_pct: f64,
}

/// Submit a recipe or code for a lab of the course. The recipe is checked
/// against the lab's schema first, then the course's dates and attempt
/// limits: a refused submission names every problem, and nothing is stored.
#[utoipa::path(post, path = "/api/v1/courses/{course_id}/labs/{lab_id}/submissions", tag = "labs",
    params(("course_id" = String, Path), ("lab_id" = String, Path)),
    request_body = SubmitBody,
    responses((status = 201, body = Submitted), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    access: CourseMember,
    Path(path): Path<(String, String)>,
    ApiJson(body): ApiJson<SubmitBody>,
) -> AppResult<(axum::http::StatusCode, Json<Submitted>)> {
    let lab_id = path.1;
    if access.role != Some(CourseRole::Student) && !access.is_staff() {
        return Err(AppError::Forbidden);
    }
    let staff = access.is_staff();
    let offered = db_labs::get(&state.db, &access.course.id, &lab_id)
        .await?
        .filter(|l| staff || l.is_released(crate::db::now()))
        .ok_or(AppError::NotFound)?;
    let entry = state.queue.catalog.get(&lab_id).ok_or(AppError::NotFound)?;
    let content = match (body.recipe, body.code) {
        (Some(r), None) => Content::Recipe(r),
        (None, Some(c)) => Content::Code(c),
        _ => {
            return Err(AppError::Unprocessable(
                "send exactly one of `recipe` (TOML) or `code` (Rust source)".into(),
            ))
        }
    };
    let done = coursework::submit(&state, &offered, &entry, &access.user, staff, content).await?;
    let queue_position = jobs::queue_position(&state.db, &done.job_id)
        .await?
        .unwrap_or(0);
    Ok((
        axum::http::StatusCode::CREATED,
        Json(Submitted {
            submission_id: done.submission_id,
            job_id: done.job_id,
            state: "queued".into(),
            queue_position,
            late_seconds: done.lateness.seconds,
            penalty_pct: done.lateness.penalty_pct,
        }),
    ))
}

/// The job, if the caller may see it: its student, or the course's staff.
/// Students never see the metric on the whole hidden split.
pub(crate) async fn visible_job(
    state: &AppState,
    user: &crate::db::users::User,
    job_id: &str,
) -> AppResult<(JobView, bool)> {
    let job = jobs::view(&state.db, job_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let role = courses::role_of(&state.db, &job.course_id, &user.id).await?;
    let staff = user.is_admin() || matches!(role, Some(CourseRole::Instructor | CourseRole::Ta));
    if job.user_id != user.id && !staff {
        return Err(AppError::Forbidden);
    }
    let mut job = job;
    if !staff {
        job.metric = None;
    }
    Ok((job, staff))
}

/// Cancels a job its student or the course's staff may see (the API and the
/// job page's button).
pub(crate) async fn cancel_as(
    state: &AppState,
    user: &crate::db::users::User,
    job_id: &str,
) -> AppResult<()> {
    let (job, staff) = visible_job(state, user, job_id).await?;
    let by = if staff && job.user_id != user.id {
        "staff"
    } else {
        "the student"
    };
    if jobs::cancel(&state.db, job_id, by).await?.is_none() {
        return Err(AppError::Conflict("job_already_finished"));
    }
    state.queue.changed(job_id);
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct JobOut {
    #[serde(flatten)]
    pub job: JobView,
    /// Jobs ahead of this one while it is queued.
    pub queue_position: Option<i64>,
}

/// A job: state, attempts, timing, and the grade once done.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", tag = "labs",
    params(("job_id" = String, Path)),
    responses((status = 200, body = JobOut), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
) -> AppResult<Json<JobOut>> {
    let (job, _) = visible_job(&state, &user, &job_id).await?;
    let queue_position = jobs::queue_position(&state.db, &job.id).await?;
    Ok(Json(JobOut {
        job,
        queue_position,
    }))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Only events after this sequence number.
    pub after: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct EventOut {
    pub seq: i64,
    pub at_ms: i64,
    /// `event` (a training event) or `log`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Events of a job in order (at most 1,000 per call; page with `after`).
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/events", tag = "labs",
    params(("job_id" = String, Path),
        ("after" = Option<i64>, Query, description = "Only events after this sequence number")),
    responses((status = 200, body = Vec<EventOut>), (status = 404, body = ApiErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> AppResult<Json<Vec<EventOut>>> {
    visible_job(&state, &user, &job_id).await?;
    let events = jobs::events(&state.db, &job_id, q.after, 1000).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| EventOut {
                seq: e.seq,
                at_ms: e.at_ms,
                kind: e.kind,
                data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
            })
            .collect(),
    ))
}

/// Cancel a job (its student or the course's staff). A running job stops at
/// its runner's next heartbeat.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/cancel", tag = "labs",
    params(("job_id" = String, Path)),
    responses((status = 200, body = JobOut), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
) -> AppResult<Json<JobOut>> {
    cancel_as(&state, &user, &job_id).await?;
    let (job, _) = visible_job(&state, &user, &job_id).await?;
    Ok(Json(JobOut {
        job,
        queue_position: None,
    }))
}
