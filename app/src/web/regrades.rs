//! Regrading a lab after it changed: "regrade all" requeues every counted
//! submission against the lab's current version; the page shows old and new
//! points side by side until the instructor accepts or discards them.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use tower_sessions::Session;

use super::labs::{fmt_num, LabInfo};
use super::templates::{flash, render, PageCtx};
use crate::auth::{CourseInstructor, CourseStaff};
use crate::coursework;
use crate::db::courses::Course;
use crate::db::jobs::{self, AttemptLimits, NewSubmission, RegradeOf};
use crate::db::labs as db_labs;
use crate::db::regrades::{self, Pair, Regrade};
use crate::db::submissions::{self, AttemptRow};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Starts a regrade of every counted submission of the lab against the
/// lab's current version.
pub async fn start(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
    Path((_, lab_id)): Path<(String, String)>,
) -> AppResult<Response> {
    let course_id = access.course.id.clone();
    let offered = db_labs::get(&state.db, &course_id, &lab_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let entry = state.queue.catalog.get(&lab_id).ok_or(AppError::NotFound)?;
    if regrades::of_lab(&state.db, &course_id, &lab_id)
        .await?
        .iter()
        .any(|r| r.state == "running")
    {
        return Err(AppError::Conflict("regrade_running"));
    }
    let rows = submissions::of_lab(&state.db, &course_id, &lab_id).await?;
    let mut by_student: BTreeMap<&str, Vec<&AttemptRow>> = BTreeMap::new();
    for r in &rows {
        by_student.entry(r.user_id.as_str()).or_default().push(r);
    }
    let lab_points = entry.lab.manifest.grading.points;
    let mut counted = Vec::new();
    for attempts in by_student.values() {
        let list: Vec<_> = attempts.iter().map(|r| r.attempt()).collect();
        if let Some(a) = coursework::counted(
            &list,
            offered.settings.counts,
            lab_points,
            offered.settings.points,
        ) {
            if let Some(row) = attempts.iter().find(|r| r.job_id == a.job_id) {
                counted.push(row.submission_id.clone());
            }
        }
    }
    if counted.is_empty() {
        flash(&session, "regrade_nothing").await?;
        return Ok(
            Redirect::to(&format!("/courses/{course_id}/labs/{lab_id}/settings")).into_response(),
        );
    }
    let regrade_id = regrades::create(
        &state.db,
        &course_id,
        &lab_id,
        &entry.package.version,
        &entry.package.hash,
        &access.user.id,
    )
    .await?;
    for original in &counted {
        let s = submissions::body(&state.db, original)
            .await?
            .ok_or(AppError::NotFound)?;
        let new = NewSubmission {
            course_id: &course_id,
            lab_id: &lab_id,
            lab_version: &entry.package.version,
            lab_hash: &entry.package.hash,
            user_id: &s.user_id,
            kind: if s.kind == "code" {
                sanhak_runner::protocol::SubmissionKind::Code
            } else {
                sanhak_runner::protocol::SubmissionKind::Recipe
            },
            content: &s.content,
            resources: entry.resources(),
            step_scale: state.queue.step_scale,
            due_at_ms: None,
            late_seconds: s.late_seconds,
            penalty_pct: s.penalty_pct,
            limits: AttemptLimits::default(),
            regrade: Some(RegradeOf {
                regrade_id: &regrade_id,
                original_id: original,
            }),
        };
        if let Err(refused) = jobs::submit(&state.db, &new, &state.queue.policy).await? {
            return Err(AppError::Internal(anyhow::anyhow!(
                "a regrade job was refused: {refused:?}"
            )));
        }
    }
    state.queue.wake();
    Ok(Redirect::to(&format!(
        "/courses/{course_id}/labs/{lab_id}/regrades/{regrade_id}"
    ))
    .into_response())
}

/// One row of the side-by-side table.
pub struct PairView {
    pub name: String,
    pub original_job: String,
    pub new_job: String,
    pub old: String,
    pub new: String,
    pub new_state: String,
    pub change: String,
}

#[derive(Template)]
#[template(path = "regrades/show.html")]
pub struct RegradePage {
    pub ctx: PageCtx,
    pub course: Course,
    pub lab: LabInfo,
    pub regrade: Regrade,
    pub rows: Vec<PairView>,
    pub unfinished: usize,
    pub is_instructor: bool,
}

fn view(p: &Pair, lab_points: f64, course_max: Option<f64>) -> PairView {
    let pts = |points: Option<f64>, max: Option<f64>, state: &str| {
        (state == "done" || state == "failed").then(|| {
            coursework::course_points(
                points.unwrap_or(0.0),
                max.unwrap_or(lab_points),
                course_max,
                p.penalty_pct,
            )
        })
    };
    let old = pts(p.old_points, p.old_max, &p.old_state);
    let new = pts(p.new_points, p.new_max, &p.new_state);
    let show = |x: Option<f64>| {
        x.map(|v| fmt_num((v * 100.0).round() / 100.0))
            .unwrap_or_else(|| "—".into())
    };
    PairView {
        name: p.display_name.clone(),
        original_job: p.original_job.clone(),
        new_job: p.new_job.clone(),
        old: show(old),
        new: show(new),
        new_state: p.new_state.clone(),
        change: match (old, new) {
            (Some(o), Some(n)) => {
                let d = ((n - o) * 100.0).round() / 100.0;
                if d > 0.0 {
                    format!("+{}", fmt_num(d))
                } else {
                    fmt_num(d)
                }
            }
            _ => String::new(),
        },
    }
}

pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseStaff,
    Path((_, lab_id, regrade_id)): Path<(String, String, String)>,
) -> AppResult<Response> {
    let regrade = regrades::get(&state.db, &access.course.id, &regrade_id)
        .await?
        .filter(|r| r.lab_id == lab_id)
        .ok_or(AppError::NotFound)?;
    let offered = db_labs::get(&state.db, &access.course.id, &lab_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let entry = state.queue.catalog.get(&lab_id).ok_or(AppError::NotFound)?;
    let lab = LabInfo::of(&entry);
    let pairs = regrades::pairs(&state.db, &regrade.id).await?;
    let unfinished = pairs
        .iter()
        .filter(|p| !jobs::is_final(&p.new_state))
        .count();
    let rows = pairs
        .iter()
        .map(|p| view(p, lab.points, offered.settings.points))
        .collect();
    let is_instructor = access.is_instructor();
    Ok(render(&RegradePage {
        ctx,
        course: access.course,
        lab,
        regrade,
        rows,
        unfinished,
        is_instructor,
    }))
}

async fn running_regrade(
    state: &AppState,
    access: &CourseInstructor,
    lab_id: &str,
    regrade_id: &str,
) -> AppResult<Regrade> {
    regrades::get(&state.db, &access.course.id, regrade_id)
        .await?
        .filter(|r| r.lab_id == lab_id)
        .ok_or(AppError::NotFound)
}

/// Accepts the new grades (once every regrade job has finished).
pub async fn accept(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
    Path((_, lab_id, regrade_id)): Path<(String, String, String)>,
) -> AppResult<Response> {
    let r = running_regrade(&state, &access, &lab_id, &regrade_id).await?;
    let pairs = regrades::pairs(&state.db, &r.id).await?;
    if pairs.iter().any(|p| !jobs::is_final(&p.new_state)) {
        return Err(AppError::Conflict("regrade_unfinished"));
    }
    if !regrades::accept(&state.db, &r).await? {
        return Err(AppError::Conflict("regrade_decided"));
    }
    flash(&session, "regrade_accepted").await?;
    Ok(Redirect::to(&format!(
        "/courses/{}/labs/{lab_id}/regrades/{regrade_id}",
        access.course.id
    ))
    .into_response())
}

/// Discards the regrade: the old grades stay, unfinished jobs are cancelled.
pub async fn discard(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
    Path((_, lab_id, regrade_id)): Path<(String, String, String)>,
) -> AppResult<Response> {
    let r = running_regrade(&state, &access, &lab_id, &regrade_id).await?;
    if !regrades::discard(&state.db, &r).await? {
        return Err(AppError::Conflict("regrade_decided"));
    }
    flash(&session, "regrade_discarded").await?;
    Ok(Redirect::to(&format!(
        "/courses/{}/labs/{lab_id}/regrades/{regrade_id}",
        access.course.id
    ))
    .into_response())
}
