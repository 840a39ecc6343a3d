//! The runner protocol under `/api/runner/v1` (see `runner/PROTOCOL.md`):
//! runners authenticate with a runner token (`Authorization: Bearer shr_…`),
//! register their capacity, long-poll for jobs, renew leases, stream events,
//! report results and download lab packages by content hash. Runners never
//! hold database credentials.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sanhak_runner::protocol::{self, JobSpec, LabRef, SubmissionKind, API_PREFIX};

use super::ApiJson;
use crate::db::jobs::{self, Capacity, LeaseCheck, Report};
use crate::db::runners;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// A request from a runner with a live token.
pub struct RunnerAuth {
    pub runner_id: String,
}

impl FromRequestParts<AppState> for RunnerAuth {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned());
        let Some(token) = token else {
            return Err(AppError::LoginRequired { next: None });
        };
        match runners::authenticate(&state.db, &token).await? {
            Some(runner_id) => Ok(RunnerAuth { runner_id }),
            None => Err(AppError::LoginRequired { next: None }),
        }
    }
}

/// The runner routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/register"), post(register))
        .route(&format!("{API_PREFIX}/claim"), post(claim))
        .route(
            &format!("{API_PREFIX}/jobs/{{job_id}}/heartbeat"),
            post(heartbeat),
        )
        .route(
            &format!("{API_PREFIX}/jobs/{{job_id}}/events"),
            post(events),
        )
        .route(
            &format!("{API_PREFIX}/jobs/{{job_id}}/complete"),
            post(complete),
        )
        .route(&format!("{API_PREFIX}/jobs/{{job_id}}/fail"), post(fail))
        .route(&format!("{API_PREFIX}/labs/{{lab_id}}"), get(lab_package))
        .route(
            &format!("{API_PREFIX}/labs/{{lab_id}}/files/{{sha256}}"),
            get(lab_file),
        )
}

async fn register(
    State(state): State<AppState>,
    runner: RunnerAuth,
    ApiJson(body): ApiJson<protocol::Register>,
) -> AppResult<Json<protocol::Registered>> {
    runners::register(&state.db, &runner.runner_id, &body).await?;
    tracing::info!(runner = %runner.runner_id, name = %body.name, cpu_slots = body.cpu_slots,
        gpus = body.gpus.len(), "runner registered");
    let lease_ms = state.queue.policy.lease_ms.max(1000) as u64;
    Ok(Json(protocol::Registered {
        runner_id: runner.runner_id,
        lease_seconds: lease_ms / 1000,
        heartbeat_seconds: (lease_ms / 3000).max(1),
        max_wait_ms: state.queue.max_wait.as_millis() as u64,
    }))
}

/// Long-poll for a job that fits the runner's free capacity: 200 with the
/// job, or 204 when none came within the wait.
async fn claim(
    State(state): State<AppState>,
    runner: RunnerAuth,
    ApiJson(body): ApiJson<protocol::Claim>,
) -> AppResult<Response> {
    if body.free_gpu_memory_mb.len() > 64 {
        return Err(AppError::Unprocessable("at most 64 GPUs per runner".into()));
    }
    let cap = Capacity {
        free_cpu_slots: body.free_cpu_slots,
        free_gpu_memory_mb: body.free_gpu_memory_mb.clone(),
    };
    let wait = Duration::from_millis(body.wait_ms).min(state.queue.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    runners::seen(&state.db, &runner.runner_id).await?;
    loop {
        let notified = state.queue.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(job) =
            jobs::claim(&state.db, &runner.runner_id, &cap, &state.queue.policy).await?
        {
            let spec = job_spec(&state, job).await?;
            return Ok(Json(spec).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Another app server may enqueue without waking us: look again at least every second.
        let nap = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
            // The server is stopping: answer "no job" now rather than hold
            // the shutdown for the rest of the wait.
            () = state.queue.stopped() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

async fn job_spec(state: &AppState, job: jobs::Claimed) -> AppResult<JobSpec> {
    let body = jobs::submission_body(&state.db, &job.submission_id).await?;
    let kind = SubmissionKind::parse(&body.kind)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("unknown submission kind")))?;
    Ok(JobSpec {
        job_id: job.job_id,
        lease: job.lease,
        attempt: job.attempt,
        lab: LabRef {
            id: job.lab_id,
            version: body.lab_version,
            package_hash: body.lab_hash,
        },
        kind,
        content: body.content,
        content_hash: body.content_hash,
        resources: job.resources,
        step_scale: job.step_scale,
    })
}

async fn heartbeat(
    State(state): State<AppState>,
    _runner: RunnerAuth,
    Path(job_id): Path<String>,
    ApiJson(body): ApiJson<protocol::Heartbeat>,
) -> AppResult<Json<protocol::HeartbeatReply>> {
    match jobs::heartbeat(
        &state.db,
        &job_id,
        &body.lease,
        body.phase,
        &state.queue.policy,
    )
    .await?
    {
        LeaseCheck::Live => Ok(Json(protocol::HeartbeatReply { cancel: false })),
        LeaseCheck::Cancelled => Ok(Json(protocol::HeartbeatReply { cancel: true })),
        LeaseCheck::Lost => Err(AppError::Conflict("lease_expired")),
    }
}

/// Largest event batch accepted at once.
const MAX_BATCH: usize = 1000;

async fn events(
    State(state): State<AppState>,
    _runner: RunnerAuth,
    Path(job_id): Path<String>,
    ApiJson(body): ApiJson<protocol::EventBatch>,
) -> AppResult<StatusCode> {
    if body.events.len() > MAX_BATCH {
        return Err(AppError::Unprocessable(format!(
            "at most {MAX_BATCH} events per batch"
        )));
    }
    match jobs::add_events(
        &state.db,
        &job_id,
        &body.lease,
        &body.events,
        &state.queue.policy,
    )
    .await?
    {
        Some(stored) => {
            state.queue.publish(&job_id, stored);
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(AppError::Conflict("lease_expired")),
    }
}

fn report_reply(report: Report) -> AppResult<Json<protocol::ReportReply>> {
    match report {
        Report::Recorded(state) => Ok(Json(protocol::ReportReply {
            accepted: true,
            state,
        })),
        Report::Duplicate(state) => Ok(Json(protocol::ReportReply {
            accepted: false,
            state,
        })),
        Report::LeaseLost => Err(AppError::Conflict("lease_expired")),
        Report::NoSuchJob => Err(AppError::NotFound),
    }
}

async fn complete(
    State(state): State<AppState>,
    _runner: RunnerAuth,
    Path(job_id): Path<String>,
    ApiJson(body): ApiJson<protocol::Complete>,
) -> AppResult<Json<protocol::ReportReply>> {
    let report = jobs::complete(&state.db, &job_id, &body, &state.queue.policy).await?;
    if let Report::Recorded(_) = report {
        state.queue.changed(&job_id);
    }
    if let Report::Duplicate(_) = report {
        tracing::info!(job = %job_id, "ignored a duplicate completion report");
    }
    report_reply(report)
}

async fn fail(
    State(state): State<AppState>,
    _runner: RunnerAuth,
    Path(job_id): Path<String>,
    ApiJson(body): ApiJson<protocol::Fail>,
) -> AppResult<Json<protocol::ReportReply>> {
    let report = jobs::fail(&state.db, &job_id, &body, &state.queue.policy).await?;
    if let Report::Recorded(s) = &report {
        state.queue.changed(&job_id);
        if s == "queued" {
            state.queue.wake();
        }
    }
    report_reply(report)
}

/// `?hash=`: the version a job was submitted against.
#[derive(serde::Deserialize)]
struct VersionQuery {
    hash: Option<String>,
}

/// A lab package: the version with `?hash=` (older live versions stay
/// servable for their jobs), else the latest.
async fn lab_package(
    State(state): State<AppState>,
    _runner: RunnerAuth,
    Path(lab_id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> AppResult<Json<protocol::LabPackage>> {
    let entry = match &q.hash {
        Some(hash) => state.queue.catalog.get_version(&lab_id, hash),
        None => state.queue.catalog.get(&lab_id),
    }
    .ok_or(AppError::NotFound)?;
    Ok(Json(entry.package.clone()))
}

async fn lab_file(
    State(state): State<AppState>,
    _runner: RunnerAuth,
    Path((lab_id, sha256)): Path<(String, String)>,
) -> AppResult<Response> {
    let path = state
        .queue
        .catalog
        .blob(&lab_id, &sha256)
        .ok_or(AppError::NotFound)?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("reading a lab file")))?;
    // The file may have changed on disk since the catalog hashed it.
    let check = bytes.clone();
    let actual = tokio::task::spawn_blocking(move || protocol::sha256_hex(&check))
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    if actual != sha256 {
        return Err(AppError::Conflict("lab_changed_restart_app"));
    }
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}
