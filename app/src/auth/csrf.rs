//! CSRF protection for every state-changing request that a browser session
//! can make: a per-session synchronizer token, sent back as the `_csrf` form
//! field (urlencoded forms), the `_csrf` query parameter (multipart forms) or
//! the `X-CSRF-Token` header. The check is a middleware on the whole HTML
//! router, so no handler can forget it. The bearer-token API has no cookies
//! and no such check.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq as _;
use tower_sessions::Session;

use super::session_error;
use crate::error::AppError;
use crate::secrets::new_token;

const SESSION_KEY: &str = "csrf";
pub const FIELD: &str = "_csrf";
const HEADER: &str = "x-csrf-token";
/// Largest urlencoded form body the guard buffers.
pub const FORM_LIMIT: usize = 4 * 1024 * 1024;

/// The session's token, created on first use.
pub async fn token(session: &Session) -> Result<String, AppError> {
    if let Some(t) = session
        .get::<String>(SESSION_KEY)
        .await
        .map_err(session_error)?
    {
        return Ok(t);
    }
    rotate(session).await
}

/// Replaces the session's token (at login).
pub async fn rotate(session: &Session) -> Result<String, AppError> {
    let t = new_token("");
    session
        .insert(SESSION_KEY, &t)
        .await
        .map_err(session_error)?;
    Ok(t)
}

fn query_token(req: &Request) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == FIELD)
        .map(|(_, v)| v.into_owned())
}

pub async fn guard(session: Session, req: Request, next: Next) -> Result<Response, AppError> {
    if req.method().is_safe() {
        return Ok(next.run(req).await);
    }
    let expected = session
        .get::<String>(SESSION_KEY)
        .await
        .map_err(session_error)?;
    let from_header = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let (provided, req) = match from_header.or_else(|| query_token(&req)) {
        Some(t) => (Some(t), req),
        None if is_form => {
            let (parts, body) = req.into_parts();
            let bytes = to_bytes(body, FORM_LIMIT)
                .await
                .map_err(|_| AppError::BadRequest("form_too_large"))?;
            let t = form_urlencoded::parse(&bytes)
                .find(|(k, _)| k == FIELD)
                .map(|(_, v)| v.into_owned());
            (t, Request::from_parts(parts, Body::from(bytes)))
        }
        None => (None, req),
    };
    match (expected, provided) {
        (Some(e), Some(p)) if bool::from(e.as_bytes().ct_eq(p.as_bytes())) => {
            Ok(next.run(req).await)
        }
        _ => Err(AppError::Csrf),
    }
}
