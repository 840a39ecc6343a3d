//! Site administration: users, organisations and invitations.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::templates::{flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::SiteAdmin;
use crate::db::orgs::{CreateOrgError, Org};
use crate::db::users::{CreateUserError, User};
use crate::db::{invites, orgs, users};
use crate::domain::{DisplayName, Email, OrgKind, OrgRole, Slug, UserKind};
use crate::error::{AppError, AppResult};
use crate::secrets;
use crate::state::AppState;

const PAGE_SIZE: i64 = 50;
/// Invitation links stay valid for a week.
pub const INVITE_VALID_SECS: i64 = 7 * 24 * 3600;

#[derive(Template)]
#[template(path = "admin/users.html")]
pub struct UsersPage {
    pub ctx: PageCtx,
    pub users: Vec<User>,
    pub q: String,
    pub page: i64,
    pub has_more: bool,
    pub form: NewUserForm,
    pub errors: FormErrors,
    pub created_password: Option<String>,
    pub invite_link: Option<String>,
    pub orgs: Vec<Org>,
}

#[derive(Deserialize, Default)]
pub struct UsersQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: i64,
}

#[derive(Deserialize, Default)]
pub struct NewUserForm {
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub kind: String,
}

async fn users_page(
    state: &AppState,
    ctx: PageCtx,
    query: UsersQuery,
    form: NewUserForm,
    errors: FormErrors,
    created_password: Option<String>,
    invite_link: Option<String>,
) -> AppResult<UsersPage> {
    let page = query.page.max(0);
    let mut list = users::search(&state.db, &query.q, PAGE_SIZE + 1, page * PAGE_SIZE).await?;
    let has_more = list.len() as i64 > PAGE_SIZE;
    list.truncate(PAGE_SIZE as usize);
    let orgs = orgs::list(&state.db).await?;
    Ok(UsersPage {
        ctx,
        users: list,
        q: query.q,
        page,
        has_more,
        form,
        errors,
        created_password,
        invite_link,
        orgs,
    })
}

pub async fn users_index(
    State(state): State<AppState>,
    ctx: PageCtx,
    _: SiteAdmin,
    Query(query): Query<UsersQuery>,
) -> AppResult<Response> {
    let page = users_page(
        &state,
        ctx,
        query,
        NewUserForm::default(),
        FormErrors::default(),
        None,
        None,
    )
    .await?;
    Ok(render(&page))
}

/// Creates an account with a one-time password, shown once to the admin.
pub async fn create_user(
    State(state): State<AppState>,
    ctx: PageCtx,
    _: SiteAdmin,
    Form(form): Form<NewUserForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let email = errors.check("email", Email::parse(&form.email));
    let name = errors.check("display_name", DisplayName::parse(&form.display_name));
    let kind = errors.check("kind", UserKind::parse(&form.kind).ok_or("kind_invalid"));
    if let (Some(email), Some(name), Some(kind)) = (email, name, kind) {
        let password = secrets::new_token("");
        let hash = secrets::hash_password_blocking(password.clone()).await?;
        match users::create(&state.db, &email, &name, &hash, kind).await {
            Ok(_) => {
                let page = users_page(
                    &state,
                    ctx,
                    UsersQuery::default(),
                    NewUserForm::default(),
                    errors,
                    Some(password),
                    None,
                )
                .await?;
                return Ok(render(&page));
            }
            Err(CreateUserError::DuplicateEmail) => errors.add("email", "email_taken"),
            Err(CreateUserError::Db(e)) => return Err(e.into()),
        }
    }
    let page = users_page(&state, ctx, UsersQuery::default(), form, errors, None, None).await?;
    Ok(with_errors(&page))
}

#[derive(Deserialize)]
pub struct KindForm {
    kind: String,
}

pub async fn set_kind(
    State(state): State<AppState>,
    session: Session,
    SiteAdmin(admin): SiteAdmin,
    Path(user_id): Path<String>,
    Form(form): Form<KindForm>,
) -> AppResult<Redirect> {
    let kind = UserKind::parse(&form.kind).ok_or(AppError::BadRequest("kind_invalid"))?;
    if user_id == admin.id && kind != UserKind::Admin {
        return Err(AppError::BadRequest("cannot_demote_self"));
    }
    if !users::set_kind(&state.db, &user_id, kind).await? {
        return Err(AppError::NotFound);
    }
    flash(&session, "user_updated").await?;
    Ok(Redirect::to("/admin/users"))
}

#[derive(Deserialize)]
pub struct DisableForm {
    disabled: String,
}

pub async fn set_disabled(
    State(state): State<AppState>,
    session: Session,
    SiteAdmin(admin): SiteAdmin,
    Path(user_id): Path<String>,
    Form(form): Form<DisableForm>,
) -> AppResult<Redirect> {
    if user_id == admin.id {
        return Err(AppError::BadRequest("cannot_disable_self"));
    }
    if !users::set_disabled(&state.db, &user_id, form.disabled == "1").await? {
        return Err(AppError::NotFound);
    }
    flash(&session, "user_updated").await?;
    Ok(Redirect::to("/admin/users"))
}

#[derive(Deserialize)]
pub struct InviteForm {
    #[serde(default)]
    email: String,
    kind: String,
    #[serde(default)]
    org_id: String,
    #[serde(default)]
    org_role: String,
}

/// Creates an invitation link for an instructor or a company member.
pub async fn create_invite(
    State(state): State<AppState>,
    ctx: PageCtx,
    SiteAdmin(admin): SiteAdmin,
    Form(form): Form<InviteForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let kind = match UserKind::parse(&form.kind) {
        Some(k @ (UserKind::Instructor | UserKind::Company)) => Some(k),
        _ => {
            errors.add("invite_kind", "kind_invalid");
            None
        }
    };
    let email = if form.email.trim().is_empty() {
        None
    } else {
        errors.check("invite_email", Email::parse(&form.email))
    };
    let org = if form.org_id.is_empty() {
        None
    } else {
        orgs::by_id(&state.db, &form.org_id).await?
    };
    if kind == Some(UserKind::Company) && org.as_ref().is_none_or(|o| o.kind != OrgKind::Company) {
        errors.add("invite_org", "company_required");
    }
    let org_role = OrgRole::parse(&form.org_role).unwrap_or(OrgRole::Member);
    let mut link = None;
    if let (Some(kind), true) = (kind, errors.is_empty()) {
        let token = invites::create(
            &state.db,
            invites::NewInvitation {
                email: email.as_ref().map(Email::as_str),
                kind,
                org_id: org.as_ref().map(|o| o.id.as_str()),
                org_role,
                created_by: &admin.id,
                valid_for_secs: INVITE_VALID_SECS,
            },
        )
        .await?;
        link = Some(format!("{}/invite/{token}", state.config.public_url));
    }
    let failed = !errors.is_empty();
    let page = users_page(
        &state,
        ctx,
        UsersQuery::default(),
        NewUserForm::default(),
        errors,
        None,
        link,
    )
    .await?;
    Ok(if failed {
        with_errors(&page)
    } else {
        render(&page)
    })
}

#[derive(Template)]
#[template(path = "admin/orgs.html")]
pub struct OrgsPage {
    pub ctx: PageCtx,
    pub orgs: Vec<Org>,
    pub form: OrgForm,
    pub errors: FormErrors,
}

#[derive(Deserialize, Default)]
pub struct OrgForm {
    #[serde(default)]
    pub slug: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub description: String,
}

pub async fn orgs_index(
    State(state): State<AppState>,
    ctx: PageCtx,
    _: SiteAdmin,
) -> AppResult<Response> {
    let orgs = orgs::list(&state.db).await?;
    Ok(render(&OrgsPage {
        ctx,
        orgs,
        form: OrgForm::default(),
        errors: FormErrors::default(),
    }))
}

pub async fn create_org(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    _: SiteAdmin,
    Form(form): Form<OrgForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let slug = errors.check("slug", Slug::parse(&form.slug));
    let name = errors.check("name", DisplayName::parse(&form.name));
    let kind = errors.check("kind", OrgKind::parse(&form.kind).ok_or("kind_invalid"));
    let description = errors.check(
        "description",
        crate::domain::parse_description(&form.description),
    );
    if let (Some(slug), Some(name), Some(kind), Some(description)) = (slug, name, kind, description)
    {
        match orgs::create(&state.db, &slug, name.as_str(), kind, &description).await {
            Ok(org) => {
                flash(&session, "org_created").await?;
                return Ok(Redirect::to(&format!("/orgs/{}", org.slug)).into_response());
            }
            Err(CreateOrgError::DuplicateSlug) => errors.add("slug", "slug_taken"),
            Err(CreateOrgError::Db(e)) => return Err(e.into()),
        }
    }
    let orgs = orgs::list(&state.db).await?;
    Ok(with_errors(&OrgsPage {
        ctx,
        orgs,
        form,
        errors,
    }))
}
