//! Rendering: one askama struct per page, all extending `templates/base.html`,
//! rendered through [`render`], which turns a template error into a 500.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tower_sessions::Session;

use crate::auth::{csrf, session_error, Authn};
use crate::db::users::User;
use crate::domain::MessageKey;
use crate::error::AppError;
use crate::state::AppState;

/// Renders a page; a template error is logged and becomes a plain 500.
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template render failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// What `base.html` needs on every page: the signed-in user, the CSRF token
/// for forms, and a one-time flash message.
pub struct PageCtx {
    pub user: Option<User>,
    pub csrf: String,
    pub flash: Option<String>,
    /// Unread notifications, for the navigation bar.
    pub unread: i64,
}

const FLASH_KEY: &str = "flash";

impl PageCtx {
    pub fn anonymous() -> Self {
        PageCtx {
            user: None,
            csrf: String::new(),
            flash: None,
            unread: 0,
        }
    }
    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(User::is_admin)
    }
    pub fn is_company(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.kind == crate::domain::UserKind::Company)
    }
    pub fn can_create_courses(&self) -> bool {
        self.user.as_ref().is_some_and(|u| {
            matches!(
                u.kind,
                crate::domain::UserKind::Instructor | crate::domain::UserKind::Admin
            )
        })
    }
}

impl FromRequestParts<AppState> for PageCtx {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|(_, msg)| {
                AppError::Internal(anyhow::anyhow!("session layer missing: {msg}"))
            })?;
        let csrf = csrf::token(&session).await?;
        // `remove` marks the session changed (a database write on every
        // page), so read first and remove only a flash that is there.
        let flash = match session
            .get::<String>(FLASH_KEY)
            .await
            .map_err(session_error)?
        {
            Some(_) => session
                .remove::<String>(FLASH_KEY)
                .await
                .map_err(session_error)?,
            None => None,
        };
        let user = parts.extensions.get::<Authn>().and_then(|a| a.user.clone());
        let mut unread = 0;
        if let Some(user) = &user {
            touch(&session).await?;
            unread = crate::db::notifications::unread_count(&state.db, &user.id).await?;
        }
        Ok(PageCtx {
            user,
            csrf,
            flash,
            unread,
        })
    }
}

const TOUCHED_KEY: &str = "touched_at";
/// How stale the stored expiry of an active session may get.
const TOUCH_EVERY_SECS: i64 = 3600;

/// Sessions expire after a week without activity, but a page view that
/// changes nothing does not save the session. So an active session is saved
/// (its stored expiry renewed) at most once an hour.
async fn touch(session: &Session) -> Result<(), AppError> {
    let now = crate::db::now();
    let last = session
        .get::<i64>(TOUCHED_KEY)
        .await
        .map_err(session_error)?;
    if last.is_none_or(|t| now - t >= TOUCH_EVERY_SECS) {
        session
            .insert(TOUCHED_KEY, now)
            .await
            .map_err(session_error)?;
    }
    Ok(())
}

/// Shows `key` (a message key from `templates/macros.html`) on the next page.
pub async fn flash(session: &Session, key: MessageKey) -> Result<(), AppError> {
    session.insert(FLASH_KEY, key).await.map_err(session_error)
}

/// Field errors of a form: field name → message key.
#[derive(Default, Debug)]
pub struct FormErrors(BTreeMap<&'static str, MessageKey>);

impl FormErrors {
    pub fn add(&mut self, field: &'static str, key: MessageKey) {
        self.0.entry(field).or_insert(key);
    }
    /// Records the error of a parse result and returns its value.
    pub fn check<T>(&mut self, field: &'static str, parsed: Result<T, MessageKey>) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(key) => {
                self.add(field, key);
                None
            }
        }
    }
    pub fn get(&self, field: &str) -> Option<&'static str> {
        self.0.get(field).copied()
    }
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, MessageKey)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }
}

/// A page re-rendered with errors is a 422, so clients and tests can tell.
pub fn with_errors<T: Template>(page: &T) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, render(page)).into_response()
}

#[derive(Template)]
#[template(path = "errors/error.html")]
pub struct ErrorPage {
    pub ctx: PageCtx,
    pub status: u16,
    pub code: &'static str,
    pub retry_after: Option<i64>,
}

impl ErrorPage {
    pub fn new(status: StatusCode, code: &'static str, retry_after: Option<i64>) -> Self {
        ErrorPage {
            ctx: PageCtx::anonymous(),
            status: status.as_u16(),
            code,
            retry_after,
        }
    }
    pub fn retry_minutes(&self) -> i64 {
        self.retry_after.map(|s| (s + 59) / 60).unwrap_or(0)
    }
}

/// Formats unix seconds as a UTC date and time for pages.
pub fn datetime(ts: &i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(*ts)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}
