//! Live job events for the browser: `GET /jobs/{job_id}/stream` is a
//! Server-Sent Events stream of the job's stored events, each with its
//! sequence number as the SSE id, so a reconnecting `EventSource` resumes
//! after the last event it saw (`Last-Event-ID`). The stream ends with an
//! `end` event carrying the job's final state.
//!
//! The database is the source of truth: the stream reads events after the
//! last id it sent, whenever the queue's broadcast says this job has new
//! ones, and every few seconds in any case (events stored by another app
//! server do not reach this one's broadcast).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;

use askama::Template;
use axum::response::{IntoResponse, Redirect, Response};
use tower_sessions::Session;

use super::charts;
use super::templates::{flash, render, PageCtx};
use crate::auth::CurrentUser;
use crate::db::jobs::{self, JobView};
use crate::db::labs as db_labs;
use crate::db::{courses, submissions};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::web::api::jobs::visible_job;

/// Events read from the database per batch.
const BATCH: i64 = 500;
/// How often the stream looks at the database without a broadcast.
const POLL: Duration = Duration::from_secs(5);
/// … and while the job waits in the queue (its position changes as other
/// jobs start, which this job's broadcast does not announce).
const QUEUED_POLL: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
pub struct StreamQuery {
    /// Start after this event (a page that already shows events up to it);
    /// `Last-Event-ID` from a reconnecting browser wins over it.
    pub after: Option<i64>,
}

pub async fn stream(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    visible_job(&state, &user, &job_id).await?;
    let mut last: Option<i64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(q.after);
    // The state (and queue position) last sent; a `state` event goes out
    // whenever it changes.
    let mut sent_state: Option<(String, Option<i64>)> = None;
    // Subscribe before the first read, so nothing stored in between is missed.
    let mut updates = state.queue.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        loop {
            if drain(&state, &job_id, &mut last, &tx).await.is_err() {
                return;
            }
            let now_state = jobs::state_of(&state.db, &job_id).await;
            if let Ok(Some(s)) = &now_state {
                let position = if s == "queued" {
                    jobs::queue_position(&state.db, &job_id)
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                let current = (s.clone(), position);
                if sent_state.as_ref() != Some(&current) {
                    let data = serde_json::json!({"state": current.0, "queue_position": current.1});
                    if tx
                        .send(Ok(Event::default().event("state").data(data.to_string())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent_state = Some(current);
                }
            }
            match now_state {
                Ok(Some(s)) if jobs::is_final(&s) => {
                    // Events stored just before the end, then the end.
                    if drain(&state, &job_id, &mut last, &tx).await.is_ok() {
                        let _ = tx.send(Ok(Event::default().event("end").data(s))).await;
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, job = %job_id, "reading a job's state for a stream");
                    return;
                }
            }
            // Wait for news of this job, or the poll interval.
            let news = async {
                loop {
                    match updates.recv().await {
                        Ok(u) if u.job_id == job_id => return,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => return,
                        Err(RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                () = news => {}
                () = tokio::time::sleep(
                    if matches!(&sent_state, Some((s, _)) if s == "queued") { QUEUED_POLL } else { POLL }
                ) => {}
                () = tx.closed() => return,
                // The server is stopping; the browser reconnects with the
                // last event id it saw.
                () = state.queue.stopped() => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// Sends every stored event after `last`, in order. `Err` when the client
/// left or the database failed (the stream then ends).
async fn drain(
    state: &AppState,
    job_id: &str,
    last: &mut Option<i64>,
    tx: &tokio::sync::mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), ()> {
    loop {
        let batch = jobs::events(&state.db, job_id, *last, BATCH)
            .await
            .map_err(
                |e| tracing::warn!(error = %e, job = %job_id, "reading job events for a stream"),
            )?;
        let full = batch.len() as i64 == BATCH;
        for e in batch {
            *last = Some(e.seq);
            let event = Event::default()
                .id(e.seq.to_string())
                .event(e.kind)
                .data(e.data);
            tx.send(Ok(event)).await.map_err(|_| ())?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// One line of a diff between two attempts.
pub struct DiffLine {
    /// `+`, `-`, ` ` or `@` (a hunk header).
    pub tag: char,
    pub text: String,
}

/// A unified diff of two texts by lines, three lines of context.
pub fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    use similar::{ChangeTag, TextDiff};
    let diff = TextDiff::from_lines(old, new);
    let mut out = Vec::new();
    for group in diff.grouped_ops(3) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let (old_range, new_range) = (
            first.old_range().start..last.old_range().end,
            first.new_range().start..last.new_range().end,
        );
        out.push(DiffLine {
            tag: '@',
            text: format!(
                "@ -{},{} +{},{} @@",
                old_range.start + 1,
                old_range.len(),
                new_range.start + 1,
                new_range.len()
            ),
        });
        for op in &group {
            for change in diff.iter_changes(op) {
                out.push(DiffLine {
                    tag: match change.tag() {
                        ChangeTag::Delete => '-',
                        ChangeTag::Insert => '+',
                        ChangeTag::Equal => ' ',
                    },
                    text: change.value().trim_end_matches(['\n', '\r']).to_owned(),
                });
            }
        }
    }
    out
}

/// A compiler message placed on a line of the student's file.
pub struct DiagView {
    pub level: String,
    pub code: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
    pub rendered: String,
}

/// One line of the submitted source, with the messages on it.
pub struct SourceLine {
    pub number: usize,
    pub text: String,
    pub level: Option<String>,
}

/// The grade as the page shows it.
pub struct ResultView {
    pub course_points: String,
    pub course_max: String,
    pub lab_points: String,
    pub lab_max: String,
    pub penalty: Option<String>,
    pub metric_name: String,
    pub public_metric: Option<String>,
    /// Staff, or students once private scores are released.
    pub metric: Option<String>,
    pub reaches_target: Option<bool>,
    pub per_class_svg: Option<String>,
    pub confusion_svg: Option<String>,
    pub hints: Vec<String>,
    pub lines: Vec<String>,
    pub early_stopped_at: Option<u64>,
}

#[derive(Template)]
#[template(path = "jobs/show.html")]
pub struct JobPage {
    pub ctx: PageCtx,
    pub job: JobView,
    pub course_code: String,
    pub lab_title: String,
    pub is_staff: bool,
    pub is_owner: bool,
    pub owner_name: String,
    pub number: usize,
    pub attempts: usize,
    pub is_recipe: bool,
    pub content: String,
    pub submitted_at: i64,
    pub late: Option<String>,
    pub diff: Vec<DiffLine>,
    pub previous_job: Option<String>,
    pub result: Option<ResultView>,
    pub diagnostics: Vec<DiagView>,
    pub source: Vec<SourceLine>,
    pub events_json: String,
    pub last_seq: i64,
    pub queue_position: Option<i64>,
    pub is_final: bool,
    pub timing: String,
}

impl JobPage {
    pub fn queue_text(&self) -> String {
        match self.queue_position {
            Some(0) => "next in the queue".into(),
            Some(n) => format!("{n} job(s) ahead in the queue"),
            None => String::new(),
        }
    }
}

/// Events shown on the page at first (the stream sends the rest).
const PAGE_EVENTS: i64 = 5_000;

fn grade_view(
    report: &serde_json::Value,
    job: &JobView,
    penalty_pct: f64,
    course_max: Option<f64>,
    lab_points: f64,
    show_private: bool,
) -> ResultView {
    use serde_json::Value;
    // Recipe labs report a GradeReport; code labs a CodeGrade whose
    // fine-tuning run holds one.
    let grade = if report.get("feedback").is_some_and(Value::is_object) {
        Some(report)
    } else {
        report
            .pointer("/fine_tune/outcome")
            .filter(|g| g.get("feedback").is_some())
    };
    let feedback = grade.and_then(|g| g.get("feedback"));
    let per_class: Vec<(String, f64)> = feedback
        .and_then(|f| f.get("per_class"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        c.get("class")?.as_str()?.to_owned(),
                        c.get("accuracy")?.as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let confusion: Option<Vec<Vec<u32>>> = feedback
        .and_then(|f| f.get("confusion"))
        .and_then(|c| serde_json::from_value(c.clone()).ok());
    let labels: Vec<String> = per_class.iter().map(|(c, _)| c.clone()).collect();
    let max = job.max_points.unwrap_or(lab_points);
    let points = job.points.unwrap_or(0.0);
    ResultView {
        course_points: super::labs::fmt_num(
            (crate::coursework::course_points(points, max, course_max, penalty_pct) * 100.0)
                .round()
                / 100.0,
        ),
        course_max: super::labs::fmt_num(course_max.unwrap_or(max)),
        lab_points: super::labs::fmt_num((points * 100.0).round() / 100.0),
        lab_max: super::labs::fmt_num(max),
        penalty: (penalty_pct > 0.0)
            .then(|| format!("−{}% late penalty", super::labs::fmt_num(penalty_pct))),
        metric_name: grade
            .and_then(|g| g.get("metric_name"))
            .and_then(Value::as_str)
            .unwrap_or("metric")
            .to_owned(),
        public_metric: job.public_metric.map(|m| format!("{m:.4}")),
        metric: if show_private {
            job.metric.map(|m| format!("{m:.4}"))
        } else {
            None
        },
        reaches_target: grade
            .and_then(|g| g.get("reaches_target"))
            .and_then(Value::as_bool),
        per_class_svg: (!per_class.is_empty()).then(|| {
            charts::bars(
                "Accuracy per class on the public part",
                &per_class,
                1.0,
                |v| format!("{:.0}%", v * 100.0),
            )
        }),
        confusion_svg: confusion.filter(|c| !c.is_empty()).map(|c| {
            charts::heatmap(
                "Confusion matrix on the public part (rows: true class)",
                &labels,
                &c,
            )
        }),
        hints: feedback
            .and_then(|f| f.get("hints"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        lines: report
            .get("feedback")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        early_stopped_at: feedback
            .and_then(|f| f.pointer("/curve/early_stopped_at"))
            .and_then(Value::as_u64),
    }
}

/// Compiler messages of a code job (from its `compile` event).
fn diagnostics(events: &[jobs::StoredEvent]) -> Vec<DiagView> {
    let Some(compile) = events.iter().rev().find(|e| e.kind == "compile") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&compile.data).unwrap_or_default();
    v.get("diagnostics")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    let level = d.get("level")?.as_str()?.to_owned();
                    if level != "error" && level != "warning" {
                        return None;
                    }
                    Some(DiagView {
                        level,
                        code: d
                            .get("code")
                            .and_then(|c| c.as_str())
                            .unwrap_or("")
                            .to_owned(),
                        line: d
                            .get("line")
                            .and_then(serde_json::Value::as_u64)
                            .map(|l| l as u32),
                        column: d
                            .get("column")
                            .and_then(serde_json::Value::as_u64)
                            .map(|l| l as u32),
                        message: d
                            .get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("")
                            .to_owned(),
                        rendered: d
                            .get("rendered")
                            .and_then(|m| m.as_str())
                            .unwrap_or("")
                            .to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    }
}

/// A job's page: live progress while it runs, the grade when it is done.
pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
) -> AppResult<Response> {
    let (job, staff) = visible_job(&state, &user, &job_id).await?;
    let detail = submissions::detail_of_job(&state.db, &job_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let course = courses::by_id(&state.db, &job.course_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let offered = db_labs::get(&state.db, &job.course_id, &job.lab_id).await?;
    let entry = state.queue.catalog.get(&job.lab_id);
    let lab_title = entry
        .as_ref()
        .map(|e| e.lab.manifest.title.clone())
        .unwrap_or_else(|| job.lab_id.clone());
    let lab_points = entry
        .as_ref()
        .map(|e| e.lab.manifest.grading.points)
        .unwrap_or(100.0);
    let history =
        submissions::of_student(&state.db, &job.course_id, &job.lab_id, &job.user_id).await?;
    let attempts = history.len();
    let number = history
        .iter()
        .position(|r| r.job_id == job.id)
        .map(|i| attempts - i)
        .unwrap_or(0);
    let previous = submissions::previous(&state.db, &detail).await?;
    let diff = previous
        .as_ref()
        .map(|(_, old)| diff_lines(old, &detail.content))
        .unwrap_or_default();
    let events = jobs::events(&state.db, &job.id, None, PAGE_EVENTS).await?;
    let last_seq = events.last().map(|e| e.seq).unwrap_or(-1);
    let diags = diagnostics(&events);
    let source = if detail.kind == "code" && !diags.is_empty() {
        detail
            .content
            .lines()
            .enumerate()
            .map(|(i, l)| SourceLine {
                number: i + 1,
                text: l.to_owned(),
                level: diags
                    .iter()
                    .filter(|d| d.line == Some(i as u32 + 1))
                    .map(|d| d.level.clone())
                    .min(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let events_json = serde_json::to_string(
        &events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq,
                    "kind": e.kind,
                    "data": serde_json::from_str::<serde_json::Value>(&e.data).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| "[]".into())
    .replace("</", "<\\/");
    let show_private = staff
        || offered
            .as_ref()
            .is_some_and(|o| super::labs::private_visible(&o.settings, crate::db::now()));
    let result = (job.state == "done" || job.state == "failed").then(|| {
        let report: serde_json::Value = serde_json::from_str(&detail.report).unwrap_or_default();
        grade_view(
            &report,
            &job,
            detail.penalty_pct,
            offered.as_ref().and_then(|o| o.settings.points),
            lab_points,
            show_private,
        )
    });
    let owner_name = if job.user_id == user.id {
        user.display_name.clone()
    } else {
        super::labs::display_name(&state, &job.user_id).await?
    };
    let queue_position = jobs::queue_position(&state.db, &job.id).await?;
    let timing = {
        let mut parts = Vec::new();
        if let (Some(s), Some(f)) = (job.started_ms, job.finished_ms) {
            parts.push(format!("ran {}", seconds((f - s) as f64 / 1000.0)));
        }
        if let Some(s) = job.started_ms {
            parts.push(format!(
                "waited {}",
                seconds((s - job.enqueued_ms).max(0) as f64 / 1000.0)
            ));
        }
        if job.cpu_seconds > 0.0 {
            parts.push(format!("{:.1} CPU-seconds", job.cpu_seconds));
        }
        parts.push(format!("{:.1} GPU-seconds", job.gpu_seconds));
        parts.join(" · ")
    };
    Ok(render(&JobPage {
        ctx,
        is_final: jobs::is_final(&job.state),
        is_owner: job.user_id == user.id,
        is_staff: staff,
        course_code: course.code,
        lab_title,
        owner_name,
        number,
        attempts,
        is_recipe: detail.kind == "recipe",
        late: super::labs::late_text(detail.late_seconds, detail.penalty_pct),
        submitted_at: detail.created_at,
        content: detail.content,
        diff,
        previous_job: previous.map(|(id, _)| id),
        result,
        diagnostics: diags,
        source,
        events_json,
        last_seq,
        queue_position,
        timing,
        job,
    }))
}

/// The cancel button of the job page.
pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
) -> AppResult<Response> {
    crate::web::api::jobs::cancel_as(&state, &user, &job_id).await?;
    flash(&session, "job_cancelled").await?;
    Ok(Redirect::to(&format!("/jobs/{job_id}")).into_response())
}
