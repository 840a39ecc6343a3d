//! In-app notifications: the list, opening one (marks it read and follows
//! its link), and marking all read.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{Redirect, Response};

use super::templates::{render, PageCtx};
use crate::auth::CurrentUser;
use crate::db::notifications::{self, Notification};
use crate::error::{is_local_path, AppError, AppResult};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "notifications/index.html")]
pub struct NotificationsPage {
    pub ctx: PageCtx,
    pub items: Vec<Notification>,
}

/// `GET /notifications`
pub async fn index(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
) -> AppResult<Response> {
    let items = notifications::recent(&state.db, &user.id, 100).await?;
    Ok(render(&NotificationsPage { ctx, items }))
}

/// `POST /notifications/{id}/open`
pub async fn open(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let link = notifications::open(&state.db, &user.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    if is_local_path(&link) {
        Ok(Redirect::to(&link))
    } else {
        Ok(Redirect::to("/notifications"))
    }
}

/// `POST /notifications/read-all`
pub async fn read_all(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> AppResult<Redirect> {
    notifications::mark_all_read(&state.db, &user.id).await?;
    Ok(Redirect::to("/notifications"))
}
