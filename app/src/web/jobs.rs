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

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::CurrentUser;
use crate::db::jobs;
use crate::error::AppResult;
use crate::state::AppState;
use crate::web::api::jobs::visible_job;

/// Events read from the database per batch.
const BATCH: i64 = 500;
/// How often the stream looks at the database without a broadcast.
const POLL: Duration = Duration::from_secs(5);

pub async fn stream(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    visible_job(&state, &user, &job_id).await?;
    let mut last: Option<i64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    // Subscribe before the first read, so nothing stored in between is missed.
    let mut updates = state.queue.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        loop {
            if drain(&state, &job_id, &mut last, &tx).await.is_err() {
                return;
            }
            match jobs::state_of(&state.db, &job_id).await {
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
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return,
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
