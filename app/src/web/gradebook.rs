//! The gradebook: students × labs with the counted points, late and
//! not-gradable attempts; its CSV export; and one student's drill-down to
//! every submission.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::courses::csv_safe;
use super::labs::{fmt_num, late_text, LabInfo};
use super::templates::{render, PageCtx};
use crate::auth::CourseStaff;
use crate::coursework;
use crate::db::courses::{self, Course, RosterEntry};
use crate::db::labs::{self as db_labs, CourseLab};
use crate::db::submissions::{self, AttemptRow};
use crate::domain::CourseRole;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// One lab column.
pub struct Column {
    pub id: String,
    pub title: String,
    pub max: f64,
    pub due: Option<i64>,
}

/// One cell: a student's standing in a lab.
#[derive(Default, Clone)]
pub struct Cell {
    pub points: Option<f64>,
    pub attempts: usize,
    pub late: usize,
    /// The largest late penalty (percent) among the late attempts.
    pub late_penalty: f64,
    pub not_gradable: usize,
    pub counted_job: Option<String>,
    /// The counted attempt was late.
    pub counted_late: bool,
}

impl Cell {
    pub fn late_penalty_text(&self) -> String {
        fmt_num(self.late_penalty)
    }
    pub fn points_text(&self) -> String {
        self.points
            .map(|p| fmt_num((p * 100.0).round() / 100.0))
            .unwrap_or_default()
    }
}

pub struct Row {
    pub student: RosterEntry,
    pub cells: Vec<Cell>,
    pub total: f64,
}

impl Row {
    pub fn total_text(&self) -> String {
        fmt_num((self.total * 100.0).round() / 100.0)
    }
}

pub struct Gradebook {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    pub max_total: f64,
}

impl Gradebook {
    pub fn max_total_text(&self) -> String {
        fmt_num(self.max_total)
    }
}

impl Column {
    pub fn max_text(&self) -> String {
        fmt_num(self.max)
    }
}

fn cell(attempts: &[&AttemptRow], offered: &CourseLab, lab_points: f64) -> Cell {
    let list: Vec<_> = attempts.iter().map(|r| r.attempt()).collect();
    let counted = coursework::counted(
        &list,
        offered.settings.counts,
        lab_points,
        offered.settings.points,
    );
    Cell {
        points: counted.map(|a| a.course_points(lab_points, offered.settings.points)),
        attempts: list.iter().filter(|a| a.uses_an_attempt()).count(),
        late: list
            .iter()
            .filter(|a| a.uses_an_attempt() && a.late_seconds > 0)
            .count(),
        late_penalty: list
            .iter()
            .filter(|a| a.uses_an_attempt())
            .map(|a| a.penalty_pct)
            .fold(0.0, f64::max),
        not_gradable: list.iter().filter(|a| a.state == "not_gradable").count(),
        counted_job: counted.map(|a| a.job_id.clone()),
        counted_late: counted.is_some_and(|a| a.late_seconds > 0),
    }
}

/// The whole gradebook of a course.
pub async fn build(state: &AppState, course_id: &str) -> AppResult<Gradebook> {
    let offered = db_labs::of_course(&state.db, course_id).await?;
    let mut columns = Vec::new();
    let mut labs = Vec::new();
    for o in offered {
        let Some(entry) = state.queue.catalog.get(&o.lab_id) else {
            continue;
        };
        let info = LabInfo::of(&entry);
        columns.push(Column {
            id: o.lab_id.clone(),
            title: info.title.clone(),
            max: o.settings.points.unwrap_or(info.points),
            due: o.settings.due_at,
        });
        labs.push((o, info.points));
    }
    let students: Vec<RosterEntry> = courses::roster(&state.db, course_id)
        .await?
        .into_iter()
        .filter(|r| r.role == CourseRole::Student)
        .collect();
    let all = submissions::of_course(&state.db, course_id).await?;
    let mut by: HashMap<(&str, &str), Vec<&AttemptRow>> = HashMap::new();
    for r in &all {
        by.entry((r.user_id.as_str(), r.lab_id.as_str()))
            .or_default()
            .push(r);
    }
    let rows = students
        .into_iter()
        .map(|s| {
            let cells: Vec<Cell> = labs
                .iter()
                .map(|(o, lab_points)| {
                    by.get(&(s.user_id.as_str(), o.lab_id.as_str()))
                        .map(|a| cell(a, o, *lab_points))
                        .unwrap_or_default()
                })
                .collect();
            let total = cells.iter().filter_map(|c| c.points).sum();
            Row {
                student: s,
                cells,
                total,
            }
        })
        .collect();
    Ok(Gradebook {
        max_total: columns.iter().map(|c| c.max).sum(),
        columns,
        rows,
    })
}

#[derive(Template)]
#[template(path = "gradebook/index.html")]
pub struct GradebookPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub book: Gradebook,
}

pub async fn index(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseStaff,
) -> AppResult<Response> {
    let book = build(&state, &access.course.id).await?;
    Ok(render(&GradebookPage {
        ctx,
        course: access.course,
        book,
    }))
}

/// The gradebook as CSV: one row per student; for each lab its points, late
/// attempts and not-gradable attempts; then the total. Cells that a
/// spreadsheet would read as a formula are neutralised.
pub fn to_csv(book: &Gradebook) -> AppResult<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["name".to_owned(), "email".to_owned()];
    for c in &book.columns {
        header.push(format!("{} (of {})", c.id, fmt_num(c.max)));
        header.push(format!("{} late", c.id));
        header.push(format!("{} not gradable", c.id));
    }
    header.push(format!("total (of {})", fmt_num(book.max_total)));
    let internal =
        |e: csv::Error| AppError::Internal(anyhow::Error::new(e).context("gradebook csv"));
    w.write_record(header.iter().map(|h| csv_safe(h)))
        .map_err(internal)?;
    for r in &book.rows {
        let mut rec = vec![
            csv_safe(&r.student.display_name),
            csv_safe(&r.student.email),
        ];
        for c in &r.cells {
            rec.push(c.points_text());
            rec.push(c.late.to_string());
            rec.push(c.not_gradable.to_string());
        }
        rec.push(r.total_text());
        w.write_record(&rec).map_err(internal)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| AppError::Internal(anyhow::anyhow!("gradebook csv: {e}")))?;
    String::from_utf8(bytes).map_err(|e| AppError::Internal(anyhow::Error::new(e)))
}

pub async fn export(State(state): State<AppState>, access: CourseStaff) -> AppResult<Response> {
    let book = build(&state, &access.course.id).await?;
    let body = to_csv(&book)?;
    let filename = format!(
        "gradebook-{}-{}.csv",
        access.course.code, access.course.term
    )
    .replace(
        |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'),
        "_",
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// One attempt in the drill-down.
pub struct AttemptView {
    pub job_id: String,
    pub submitted_at: i64,
    pub state: String,
    pub points: Option<String>,
    pub public_metric: Option<String>,
    pub metric: Option<String>,
    pub late: Option<String>,
    pub counted: bool,
    pub message: String,
}

pub struct LabAttempts {
    pub id: String,
    pub title: String,
    pub cell: Cell,
    pub max: f64,
    pub attempts: Vec<AttemptView>,
}

impl LabAttempts {
    pub fn max_text(&self) -> String {
        fmt_num(self.max)
    }
}

#[derive(Template)]
#[template(path = "gradebook/student.html")]
pub struct StudentPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub student: RosterEntry,
    pub labs: Vec<LabAttempts>,
}

pub async fn student(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseStaff,
    Path((_, user_id)): Path<(String, String)>,
) -> AppResult<Response> {
    let student = courses::roster(&state.db, &access.course.id)
        .await?
        .into_iter()
        .find(|r| r.user_id == user_id && r.role == CourseRole::Student)
        .ok_or(AppError::NotFound)?;
    let mut labs = Vec::new();
    for o in db_labs::of_course(&state.db, &access.course.id).await? {
        let Some(entry) = state.queue.catalog.get(&o.lab_id) else {
            continue;
        };
        let info = LabInfo::of(&entry);
        let rows =
            submissions::of_student(&state.db, &access.course.id, &o.lab_id, &user_id).await?;
        let refs: Vec<&AttemptRow> = rows.iter().collect();
        let c = cell(&refs, &o, info.points);
        let attempts = rows
            .iter()
            .map(|r| {
                let a = r.attempt();
                AttemptView {
                    job_id: r.job_id.clone(),
                    submitted_at: r.created_at,
                    state: r.state.clone(),
                    points: a
                        .is_graded()
                        .then(|| fmt_num(a.course_points(info.points, o.settings.points))),
                    public_metric: r.public_metric.map(|m| format!("{m:.4}")),
                    metric: r.metric.map(|m| format!("{m:.4}")),
                    late: late_text(r.late_seconds, r.penalty_pct),
                    counted: c.counted_job.as_deref() == Some(r.job_id.as_str()),
                    message: r
                        .message
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(160)
                        .collect(),
                }
            })
            .collect();
        labs.push(LabAttempts {
            id: o.lab_id.clone(),
            title: info.title,
            max: o.settings.points.unwrap_or(info.points),
            cell: c,
            attempts,
        });
    }
    Ok(render(&StudentPage {
        ctx,
        course: access.course,
        student,
        labs,
    }))
}
