//! Operations endpoints: health and static assets.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

use crate::error::AppError;
use crate::state::AppState;

/// `GET /healthz`: 200 when the database answers.
pub async fn healthz(State(state): State<AppState>) -> Response {
    match sqlx::query_scalar::<_, i64>("SELECT 1")
        .fetch_one(&state.db.pool)
        .await
    {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

#[derive(Embed)]
#[folder = "../static/"]
struct Assets;

/// `GET /static/{*path}`: files from `static/`, embedded in the binary.
pub async fn asset(Path(path): Path<String>) -> Result<Response, AppError> {
    let file = Assets::get(&path).ok_or(AppError::NotFound)?;
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    Ok((
        [
            (header::CONTENT_TYPE, mime.as_ref().to_owned()),
            (header::CACHE_CONTROL, "public, max-age=3600".to_owned()),
        ],
        file.data.into_owned(),
    )
        .into_response())
}
