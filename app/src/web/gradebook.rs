//! The gradebook: students × labs with the counted points, late and
//! not-gradable attempts; its CSV export; and one student's drill-down to
//! every submission.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;

use super::charts;
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
    Ok(super::courses::csv_download(
        "gradebook",
        &access.course,
        body,
    ))
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

/// One lab's numbers on the analytics page.
pub struct LabAnalytics {
    pub id: String,
    pub title: String,
    pub max: String,
    pub students_with_grade: usize,
    pub students: usize,
    pub attempts: usize,
    pub mean: Option<String>,
    pub median: Option<String>,
    pub scores_svg: String,
    pub failures: Vec<(String, usize)>,
    pub wait: Option<Spread>,
    pub run: Option<Spread>,
    pub wait_svg: Option<String>,
    pub run_svg: Option<String>,
}

/// Median, 90th percentile and largest of some seconds.
pub struct Spread {
    pub p50: String,
    pub p90: String,
    pub max: String,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let s = |x: f64| format!("{x:.1} s");
    Some(Spread {
        p50: s(quantile(&v, 0.5)),
        p90: s(quantile(&v, 0.9)),
        max: s(v[v.len() - 1]),
    })
}

/// The first line of a failure message, without what differs between jobs
/// (numbers), so that the same failure groups together.
pub fn failure_key(message: &str) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    let mut out = String::with_capacity(line.len());
    let mut last_digit = false;
    for c in line.chars().take(160) {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    if out.is_empty() {
        "(no message)".into()
    } else {
        out
    }
}

#[derive(Template)]
#[template(path = "gradebook/analytics.html")]
pub struct AnalyticsPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub labs: Vec<LabAnalytics>,
}

/// Course analytics: per lab, the distribution of counted scores, the most
/// common failures, and how long jobs waited and ran.
pub async fn analytics(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseStaff,
) -> AppResult<Response> {
    let book = build(&state, &access.course.id).await?;
    let all = submissions::of_course(&state.db, &access.course.id).await?;
    let mut labs = Vec::new();
    for (i, col) in book.columns.iter().enumerate() {
        let scores: Vec<f64> = book.rows.iter().filter_map(|r| r.cells[i].points).collect();
        let rows: Vec<&AttemptRow> = all.iter().filter(|r| r.lab_id == col.id).collect();
        let mut failures: HashMap<String, usize> = HashMap::new();
        for r in rows
            .iter()
            .filter(|r| r.state == "failed" || r.state == "not_gradable")
        {
            *failures.entry(failure_key(&r.message)).or_default() += 1;
        }
        let mut failures: Vec<(String, usize)> = failures.into_iter().collect();
        failures.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        failures.truncate(8);
        let waits: Vec<f64> = rows
            .iter()
            .filter_map(|r| {
                r.started_ms
                    .map(|s| (s - r.enqueued_ms).max(0) as f64 / 1000.0)
            })
            .collect();
        let runs: Vec<f64> = rows
            .iter()
            .filter_map(|r| Some((r.finished_ms? - r.started_ms?).max(0) as f64 / 1000.0))
            .collect();
        let mut sorted = scores.clone();
        sorted.sort_by(f64::total_cmp);
        let seconds_chart = |title: &str, v: &[f64]| {
            (!v.is_empty()).then(|| {
                let hi = v.iter().copied().fold(1.0, f64::max).ceil();
                charts::histogram(title, v, 0.0, hi, 10)
            })
        };
        labs.push(LabAnalytics {
            id: col.id.clone(),
            title: col.title.clone(),
            max: fmt_num(col.max),
            students_with_grade: scores.len(),
            students: book.rows.len(),
            attempts: rows.len(),
            mean: (!scores.is_empty()).then(|| {
                fmt_num((scores.iter().sum::<f64>() / scores.len() as f64 * 10.0).round() / 10.0)
            }),
            median: (!sorted.is_empty())
                .then(|| fmt_num((quantile(&sorted, 0.5) * 10.0).round() / 10.0)),
            scores_svg: charts::histogram(
                &format!("Counted points in {} (of {})", col.title, fmt_num(col.max)),
                &scores,
                0.0,
                col.max.max(1.0),
                10,
            ),
            failures,
            wait_svg: seconds_chart("Seconds from submission to start", &waits),
            run_svg: seconds_chart("Seconds of training and grading", &runs),
            wait: spread(waits),
            run: spread(runs),
        });
    }
    Ok(render(&AnalyticsPage {
        ctx,
        course: access.course,
        labs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_group_without_their_numbers() {
        assert_eq!(
            failure_key("used 2049 MB of memory, more than 2048\nmore"),
            failure_key("used 3000 MB of memory, more than 2048")
        );
        assert_eq!(failure_key(""), "(no message)");
    }

    #[test]
    fn spreads_pick_from_the_sorted_values() {
        let s = spread(vec![5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.p50.as_str(), s.max.as_str()), ("3.0 s", "5.0 s"));
        assert!(spread(Vec::new()).is_none());
    }
}
