//! The JSON API under `/api/v1`, authenticated with personal access tokens
//! (`Authorization: Bearer shk_…`). Every route is registered through
//! utoipa-axum's `routes!`, so the OpenAPI document served at
//! `/api/v1/openapi.json` is generated from the handlers and cannot drift.

pub mod courses;
pub mod jobs;
pub mod publish;
pub mod runner;

use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{AppError, ErrorInfo};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sanhak API", description = "Courses and rosters of the Sanhak lab platform."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "courses", description = "Courses, join codes and rosters"), (name = "account", description = "The caller"),
        (name = "labs", description = "Labs of a course, submissions and their jobs; publishing lab packages"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API error body.
#[derive(Serialize, ToSchema)]
pub struct ApiErrorBody {
    /// Machine-readable code, e.g. `not_found`, `forbidden`, `validation_failed`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// Field errors (field → message key), for `validation_failed`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// The API routes and their OpenAPI document.
pub fn router() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(courses::me))
        .routes(routes!(courses::list, courses::create))
        .routes(routes!(courses::join))
        .routes(routes!(courses::get))
        .routes(routes!(courses::regenerate_join_code))
        .routes(routes!(courses::roster))
        .routes(routes!(courses::add_ta))
        .routes(routes!(courses::remove_member))
        .routes(routes!(jobs::course_labs))
        .routes(routes!(jobs::offer_lab))
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::job_events))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(publish::push))
        .routes(routes!(publish::get_version))
        .split_for_parts()
}

/// On `/api/` paths, error responses become JSON `{error, message}` (and a
/// missing login is a 401, not a redirect to the login page).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let is_api = req.uri().path().starts_with("/api/");
    let response = next.run(req).await;
    if !is_api {
        return response;
    }
    match response.extensions().get::<ErrorInfo>() {
        Some(info) => {
            let body = ApiErrorBody {
                error: info.code.to_owned(),
                message: info.message.clone(),
                fields: info
                    .fields
                    .iter()
                    .map(|(f, k)| ((*f).to_owned(), (*k).to_owned()))
                    .collect(),
            };
            let mut json = (info.status, Json(body)).into_response();
            if let Some(retry) = response.headers().get(header::RETRY_AFTER) {
                json.headers_mut()
                    .insert(header::RETRY_AFTER, retry.clone());
            }
            json
        }
        None => response,
    }
}

/// A JSON body whose parse errors are API errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    Json<T>: FromRequest<S>,
{
    type Rejection = AppError;
    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(_) => Err(AppError::BadRequest("invalid_json")),
        }
    }
}
