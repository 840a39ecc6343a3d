//! The web layer's error type. 4xx errors carry safe, human messages and
//! render the error page; `/api/v1` turns the same errors into JSON
//! `{error, message}` (see `web::api::json_errors`). Internal errors are
//! logged with context and shown as an opaque 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use crate::domain::MessageKey;
use crate::web::templates::ErrorPage;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    #[error("forbidden")]
    Forbidden,
    #[error("login required")]
    LoginRequired { next: Option<String> },
    #[error("bad request: {0}")]
    BadRequest(MessageKey),
    #[error("conflict: {0}")]
    Conflict(MessageKey),
    #[error("too many requests")]
    TooManyRequests { retry_after: i64 },
    #[error("missing or invalid CSRF token")]
    Csrf,
    /// Field errors from an API request body: (field, message key).
    #[error("validation failed")]
    Validation(Vec<(&'static str, MessageKey)>),
    /// A submission or request the server understood but cannot accept; the
    /// message says exactly what is wrong (it may name fields).
    #[error("{0}")]
    Unprocessable(String),
    /// The course's rules refuse this now (a deadline passed, the attempts
    /// are used up): a stable code and a message that says when it changes.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The service cannot take this now (e.g. no runner can ever fit the job).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Internal(anyhow::Error::new(e).context("database"))
    }
}

/// Attached to every error response, so the JSON API can re-render it.
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<(&'static str, MessageKey)>,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::Forbidden | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::LoginRequired { .. } => StatusCode::UNAUTHORIZED,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Validation(_) | AppError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Conflict(_) | AppError::Refused { .. } => StatusCode::CONFLICT,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code for API clients.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::NotFound => "not_found",
            AppError::Forbidden => "forbidden",
            AppError::Csrf => "csrf",
            AppError::Validation(_) => "validation_failed",
            AppError::Unprocessable(_) => "unprocessable",
            AppError::Unavailable(_) => "unavailable",
            AppError::Refused { code, .. } => code,
            AppError::LoginRequired { .. } => "unauthorized",
            AppError::BadRequest(key) | AppError::Conflict(key) => key,
            AppError::TooManyRequests { .. } => "too_many_requests",
            AppError::Internal(_) => "internal",
        }
    }

    /// The English message for API clients (pages render their text from templates).
    pub fn api_message(&self) -> String {
        match self {
            AppError::NotFound => "no such resource".into(),
            AppError::Forbidden => "you are not allowed to do this".into(),
            AppError::Csrf => "the form expired or lacks its CSRF token; reload the page".into(),
            AppError::Validation(fields) => {
                let list: Vec<String> = fields.iter().map(|(f, k)| format!("{f}: {k}")).collect();
                format!("invalid fields: {}", list.join(", "))
            }
            AppError::LoginRequired { .. } => "a valid bearer token is required".into(),
            AppError::BadRequest(key) | AppError::Conflict(key) => {
                format!("invalid request: {key}")
            }
            AppError::TooManyRequests { retry_after } => {
                format!("too many attempts; retry in {retry_after} s")
            }
            AppError::Unprocessable(m)
            | AppError::Unavailable(m)
            | AppError::Refused { message: m, .. } => m.clone(),
            AppError::Internal(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let info = ErrorInfo {
            status: self.status(),
            code: self.code(),
            message: self.api_message(),
            fields: match &self {
                AppError::Validation(fields) => fields.clone(),
                _ => Vec::new(),
            },
        };
        let mut response = match &self {
            AppError::LoginRequired { next } => {
                let target = match next {
                    Some(next) => format!("/login?next={}", urlencode(next)),
                    None => "/login".to_owned(),
                };
                Redirect::to(&target).into_response()
            }
            _ => {
                let page = ErrorPage::new(
                    self.status(),
                    self.code(),
                    match &self {
                        AppError::TooManyRequests { retry_after } => Some(*retry_after),
                        _ => None,
                    },
                );
                (self.status(), crate::web::templates::render(&page)).into_response()
            }
        };
        if let AppError::TooManyRequests { retry_after } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response.extensions_mut().insert(info);
        response
    }
}

/// Percent-encodes a string for a query parameter.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A path is safe to redirect to when it is local: `/x`, not `//host` or `/\host`.
pub fn is_local_path(p: &str) -> bool {
    p.starts_with('/') && !p.starts_with("//") && !p.starts_with("/\\") && !p.contains(['\r', '\n'])
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_only() {
        assert!(is_local_path("/dashboard"));
        assert!(is_local_path("/courses/1?x=2"));
        for bad in [
            "//evil.com",
            "https://evil.com",
            "/\\evil.com",
            "evil",
            "",
            "/a\r\nSet-Cookie: x",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }

    #[test]
    fn urlencode_keeps_paths_readable() {
        assert_eq!(
            urlencode("/courses/a b?x=1&y"),
            "/courses/a%20b%3Fx%3D1%26y"
        );
    }
}
