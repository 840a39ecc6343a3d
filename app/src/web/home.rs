//! The public home page and the signed-in dashboard.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::templates::{render, PageCtx};
use crate::auth::CurrentUser;
use crate::db::courses::MyCourse;
use crate::db::orgs::Membership;
use crate::db::{courses, orgs};
use crate::error::AppResult;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "home/index.html")]
pub struct HomePage {
    pub ctx: PageCtx,
}

pub async fn index(ctx: PageCtx) -> Response {
    render(&HomePage { ctx })
}

#[derive(Template)]
#[template(path = "home/dashboard.html")]
pub struct DashboardPage {
    pub ctx: PageCtx,
    pub courses: Vec<MyCourse>,
    pub orgs: Vec<Membership>,
}

pub async fn dashboard(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
) -> AppResult<Response> {
    let courses = courses::of_user(&state.db, &user.id).await?;
    let orgs = orgs::of_user(&state.db, &user.id).await?;
    Ok(render(&DashboardPage { ctx, courses, orgs }))
}
