//! Organisation pages: profile and members; org admins manage members and
//! invite new ones.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::admin::INVITE_VALID_SECS;
use super::templates::{flash, render, with_errors, PageCtx};
use crate::auth::{CurrentUser, OrgAdmin};
use crate::db::orgs::{Member, Org};
use crate::db::{invites, orgs, users};
use crate::domain::{Email, OrgKind, OrgRole, UserKind};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "orgs/show.html")]
pub struct OrgPage {
    pub ctx: PageCtx,
    pub org: Org,
    pub members: Vec<Member>,
    pub can_manage: bool,
    pub member_email: String,
    pub error: Option<&'static str>,
    pub invite_link: Option<String>,
}

async fn org_page(
    state: &AppState,
    ctx: PageCtx,
    org: Org,
    can_manage: bool,
    error: Option<&'static str>,
    invite_link: Option<String>,
    member_email: String,
) -> AppResult<OrgPage> {
    let members = orgs::members(&state.db, &org.id).await?;
    Ok(OrgPage {
        ctx,
        org,
        members,
        can_manage,
        member_email,
        error,
        invite_link,
    })
}

/// `GET /orgs/{slug}`: any signed-in user sees an organisation's profile and members.
pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(slug): Path<String>,
) -> AppResult<Response> {
    let org = orgs::by_slug(&state.db, &slug)
        .await?
        .ok_or(AppError::NotFound)?;
    let role = orgs::role_of(&state.db, &org.id, &user.id).await?;
    let can_manage = user.is_admin() || role == Some(OrgRole::Admin);
    Ok(render(
        &org_page(&state, ctx, org, can_manage, None, None, String::new()).await?,
    ))
}

#[derive(Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

/// Adds an existing account to the organisation (or changes its role).
pub async fn add_member(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: OrgAdmin,
    Form(form): Form<MemberForm>,
) -> AppResult<Response> {
    let role = OrgRole::parse(&form.role).unwrap_or(OrgRole::Member);
    let user = match Email::parse(&form.email) {
        Ok(email) => users::by_email(&state.db, email.as_str()).await?,
        Err(_) => None,
    };
    let Some(user) = user else {
        let page = org_page(
            &state,
            ctx,
            access.org,
            true,
            Some("user_not_found"),
            None,
            form.email,
        )
        .await?;
        return Ok(with_errors(&page));
    };
    orgs::set_member(&state.db, &access.org.id, &user.id, role).await?;
    flash(&session, "member_added").await?;
    Ok(Redirect::to(&format!("/orgs/{}", access.org.slug)).into_response())
}

pub async fn remove_member(
    State(state): State<AppState>,
    session: Session,
    access: OrgAdmin,
    Path((_, user_id)): Path<(String, String)>,
) -> AppResult<Redirect> {
    if user_id == access.user.id && !access.user.is_admin() {
        return Err(AppError::BadRequest("cannot_remove_self"));
    }
    if !orgs::remove_member(&state.db, &access.org.id, &user_id).await? {
        return Err(AppError::NotFound);
    }
    flash(&session, "member_removed").await?;
    Ok(Redirect::to(&format!("/orgs/{}", access.org.slug)))
}

#[derive(Deserialize)]
pub struct OrgInviteForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

/// An org admin invites a new member: company members for companies,
/// instructors for universities.
pub async fn invite(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: OrgAdmin,
    Form(form): Form<OrgInviteForm>,
) -> AppResult<Response> {
    let email = if form.email.trim().is_empty() {
        None
    } else {
        match Email::parse(&form.email) {
            Ok(e) => Some(e),
            Err(key) => {
                let page =
                    org_page(&state, ctx, access.org, true, Some(key), None, form.email).await?;
                return Ok(with_errors(&page));
            }
        }
    };
    let kind = match access.org.kind {
        OrgKind::Company => UserKind::Company,
        OrgKind::University => UserKind::Instructor,
    };
    let token = invites::create(
        &state.db,
        invites::NewInvitation {
            email: email.as_ref().map(Email::as_str),
            kind,
            org_id: Some(&access.org.id),
            org_role: OrgRole::parse(&form.role).unwrap_or(OrgRole::Member),
            created_by: &access.user.id,
            valid_for_secs: INVITE_VALID_SECS,
        },
    )
    .await?;
    let link = format!("{}/invite/{token}", state.config.public_url);
    Ok(render(
        &org_page(
            &state,
            ctx,
            access.org,
            true,
            None,
            Some(link),
            String::new(),
        )
        .await?,
    ))
}
