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
use crate::db::orgs::{Connection, Member, Org};
use crate::db::postings::Posting;
use crate::db::{invites, notifications, orgs, postings, users};
use crate::domain::{parse_optional_text, ConnectionState, Email, OrgKind, OrgRole, UserKind};
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
    /// The organisation's open postings (everyone), or all of them (members).
    pub postings: Vec<Posting>,
    pub is_member: bool,
    /// Company ↔ university connections, for members and site admins.
    pub connections: Vec<Connection>,
    /// Universities a company admin may ask to connect to.
    pub connectable: Vec<Org>,
    /// Postings waiting for this university's approval (its admins).
    pub awaiting_review: Vec<Posting>,
}

impl OrgPage {
    pub fn is_company(&self) -> bool {
        self.org.kind == OrgKind::Company
    }
    /// The posting kinds this organisation posts.
    pub fn posting_kinds(&self) -> Vec<(&'static str, &'static str)> {
        match self.org.kind {
            OrgKind::Company => vec![
                ("internship", "Post an internship"),
                ("project", "Post a joint project"),
            ],
            OrgKind::University => vec![("visiting", "Post a visiting-engineer position")],
        }
    }
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
    let viewer = ctx.user.as_ref().map(|u| u.id.clone()).unwrap_or_default();
    let is_member = members.iter().any(|m| m.user_id == viewer);
    let sees_all = is_member || ctx.is_admin();
    let postings = if sees_all {
        postings::of_org(&state.db, &org.id).await?
    } else {
        postings::open_of_org(&state.db, &org.id).await?
    };
    let connections = if sees_all {
        orgs::connections_of(&state.db, &org.id).await?
    } else {
        Vec::new()
    };
    let connectable = if can_manage && org.kind == OrgKind::Company {
        orgs::list(&state.db)
            .await?
            .into_iter()
            .filter(|u| {
                u.kind == OrgKind::University
                    && !connections.iter().any(|c| {
                        c.university_id == u.id
                            && matches!(
                                c.state,
                                ConnectionState::Approved | ConnectionState::Requested
                            )
                    })
            })
            .collect()
    } else {
        Vec::new()
    };
    let awaiting_review = if can_manage && org.kind == OrgKind::University {
        postings::awaiting_review(&state.db, &org.id).await?
    } else {
        Vec::new()
    };
    Ok(OrgPage {
        ctx,
        org,
        members,
        can_manage,
        member_email,
        error,
        invite_link,
        postings,
        is_member,
        connections,
        connectable,
        awaiting_review,
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

#[derive(Deserialize)]
pub struct ConnectForm {
    #[serde(default)]
    university_id: String,
    #[serde(default)]
    message: String,
}

/// `POST /orgs/{slug}/connections`: a company admin asks a university to let
/// the company post to its students.
pub async fn request_connection(
    State(state): State<AppState>,
    session: Session,
    access: OrgAdmin,
    Form(form): Form<ConnectForm>,
) -> AppResult<Redirect> {
    if access.org.kind != OrgKind::Company {
        return Err(AppError::BadRequest("connect_company_only"));
    }
    let university = orgs::by_id(&state.db, &form.university_id)
        .await?
        .filter(|u| u.kind == OrgKind::University)
        .ok_or(AppError::BadRequest("university_required"))?;
    let message = parse_optional_text(&form.message, 2000).map_err(AppError::BadRequest)?;
    if !orgs::request_connection(
        &state.db,
        &access.org.id,
        &university.id,
        &message,
        &access.user.id,
    )
    .await?
    {
        return Err(AppError::Conflict("connection_exists"));
    }
    let admins = orgs::admin_ids(&state.db, &university.id).await?;
    notifications::notify(
        &state.db.pool,
        &admins,
        &format!(
            "{} asks to post projects and internships to your students",
            access.org.name
        ),
        &format!("/orgs/{}#connections", university.slug),
    )
    .await?;
    flash(&session, "connection_requested").await?;
    Ok(Redirect::to(&format!(
        "/orgs/{}#connections",
        access.org.slug
    )))
}

#[derive(Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    to: String,
}

/// `POST /orgs/{slug}/connections/{company_id}`: a university admin
/// approves, rejects or revokes a company's connection.
pub async fn decide_connection(
    State(state): State<AppState>,
    session: Session,
    access: OrgAdmin,
    Path((_, company_id)): Path<(String, String)>,
    Form(form): Form<DecideForm>,
) -> AppResult<Redirect> {
    if access.org.kind != OrgKind::University {
        return Err(AppError::BadRequest("decide_university_only"));
    }
    let to = ConnectionState::parse(&form.to)
        .filter(|s| *s != ConnectionState::Requested)
        .ok_or(AppError::BadRequest("state_invalid"))?;
    let current = orgs::connection_state(&state.db, &company_id, &access.org.id)
        .await?
        .ok_or(AppError::NotFound)?;
    if !orgs::decide_connection(&state.db, &company_id, &access.org.id, to, &access.user.id).await?
    {
        return Err(AppError::Refused {
            code: "connection_state",
            message: format!(
                "This connection is {}; it cannot become {} from there.",
                current.as_str(),
                to.as_str()
            ),
        });
    }
    if let Some(company) = orgs::by_id(&state.db, &company_id).await? {
        let admins = orgs::admin_ids(&state.db, &company.id).await?;
        notifications::notify(
            &state.db.pool,
            &admins,
            &format!("{} {} your connection", access.org.name, to.as_str()),
            &format!("/orgs/{}#connections", company.slug),
        )
        .await?;
    }
    flash(&session, "connection_decided").await?;
    Ok(Redirect::to(&format!(
        "/orgs/{}#connections",
        access.org.slug
    )))
}
