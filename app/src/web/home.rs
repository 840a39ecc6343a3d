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
    /// Labs due soonest in the courses the user studies: (lab title, due).
    pub due: Vec<(crate::db::labs::DueLab, String)>,
    /// Joint projects whose formed team the user is on or advises.
    pub projects: Vec<crate::db::projects::Team>,
}

pub async fn dashboard(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
) -> AppResult<Response> {
    let courses = courses::of_user(&state.db, &user.id).await?;
    let orgs = orgs::of_user(&state.db, &user.id).await?;
    let projects = crate::db::projects::formed_of_user(&state.db, &user.id).await?;
    let due = crate::db::labs::due_for_student(&state.db, &user.id, crate::db::now(), 8)
        .await?
        .into_iter()
        .map(|d| {
            let title = state
                .queue
                .catalog
                .get(&d.lab_id)
                .map(|e| e.lab.manifest.title.clone())
                .unwrap_or_else(|| d.lab_id.clone());
            (d, title)
        })
        .collect();
    Ok(render(&DashboardPage {
        ctx,
        courses,
        orgs,
        due,
        projects,
    }))
}
