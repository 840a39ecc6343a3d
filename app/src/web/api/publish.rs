//! `/api/v1/labs`: publish a lab package version (instructors and site
//! admins), as `sanhak lab push` does, and follow its check.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiErrorBody;
use crate::auth::CourseCreator;
use crate::db::publish::{self as versions, LabVersion, Source};
use crate::error::{AppError, AppResult};
use crate::publish::{self, Published, MAX_ARCHIVE_BYTES};
use crate::state::AppState;

/// Content types an archive may be sent with (the bytes decide the format).
const ARCHIVE_TYPES: &[&str] = &[
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/zip",
    "application/octet-stream",
];

/// Publish a lab package: the body is a `.tar.gz`, `.tar` or `.zip` archive
/// of the lab folder. Returns at once with the version `checking` (201), or
/// as it was when the same version was already published with the same
/// content (200). Other content under a published version string is refused
/// (409, `version_published`); a hostile or invalid archive is refused with
/// nothing stored (422).
#[utoipa::path(post, path = "/api/v1/labs", tag = "labs",
    request_body(content = Vec<u8>, content_type = "application/gzip",
        description = "The archive (application/gzip, application/zip or application/x-tar)"),
    responses((status = 201, body = Published), (status = 200, body = Published),
        (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody)))]
pub async fn push(
    State(state): State<AppState>,
    CourseCreator(user): CourseCreator,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Published>)> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if !ARCHIVE_TYPES.contains(&ct) {
        return Err(AppError::Unprocessable(
            "send the archive with Content-Type application/gzip, application/zip or application/x-tar"
                .into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_ARCHIVE_BYTES)
        .await
        .map_err(|_| {
            AppError::Unprocessable(format!(
                "the archive is larger than {} MB",
                MAX_ARCHIVE_BYTES / (1024 * 1024)
            ))
        })?;
    let published = publish::publish(&state, bytes.to_vec(), Source::Push, &user.id, None).await?;
    let status = if published.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(published)))
}

/// A published version and its check.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub lab_id: String,
    pub version: String,
    pub hash: String,
    pub title: String,
    /// `checking`, `live` or `rejected`.
    pub state: String,
    /// `folder`, `upload` or `push`.
    pub source: String,
    pub published_at: i64,
    pub checked_at: Option<i64>,
    /// The check's report (JSON of `lab check`, or the error).
    pub check_report: Option<String>,
}

impl From<LabVersion> for VersionView {
    fn from(v: LabVersion) -> Self {
        VersionView {
            lab_id: v.lab_id,
            version: v.version,
            hash: v.content_hash,
            title: v.title,
            state: v.state,
            source: v.source,
            published_at: v.published_at,
            checked_at: v.checked_at,
            check_report: v.check_report,
        }
    }
}

/// One published version: its state and check report.
#[utoipa::path(get, path = "/api/v1/labs/{lab_id}/versions/{version}", tag = "labs",
    params(("lab_id" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = VersionView), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub async fn get_version(
    State(state): State<AppState>,
    _who: CourseCreator,
    Path((lab_id, version)): Path<(String, String)>,
) -> AppResult<Json<VersionView>> {
    versions::find(&state.db, &lab_id, &version)
        .await?
        .map(|v| Json(v.into()))
        .ok_or(AppError::NotFound)
}
