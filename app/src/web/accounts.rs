//! Accounts: student self-signup, login with throttling, logout, and
//! accepting an invitation (instructors and company members).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::templates::{flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::{self, ClientIp};
use crate::db::throttle::{self, Scope};
use crate::db::users::CreateUserError;
use crate::db::{invites, now, orgs, users};
use crate::domain::{DisplayName, Email, NewPassword, UserKind};
use crate::error::{is_local_path, AppError, AppResult};
use crate::secrets;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "accounts/signup.html")]
pub struct SignupPage {
    pub ctx: PageCtx,
    pub email: String,
    pub display_name: String,
    pub errors: FormErrors,
    /// Set when signing up through an invitation.
    pub invite: Option<InviteView>,
}

pub struct InviteView {
    pub token: String,
    pub kind: UserKind,
    pub org_name: Option<String>,
    pub email_locked: bool,
}

#[derive(Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_confirm: String,
}

pub async fn signup_page(ctx: PageCtx) -> Response {
    if ctx.user.is_some() {
        return Redirect::to("/dashboard").into_response();
    }
    render(&SignupPage {
        ctx,
        email: String::new(),
        display_name: String::new(),
        errors: FormErrors::default(),
        invite: None,
    })
}

struct ValidSignup {
    email: Email,
    name: DisplayName,
    password: NewPassword,
}

fn validate_signup(form: &SignupForm, errors: &mut FormErrors) -> Option<ValidSignup> {
    let email = errors.check("email", Email::parse(&form.email));
    let name = errors.check("display_name", DisplayName::parse(&form.display_name));
    let password = errors.check("password", NewPassword::parse(&form.password));
    if form.password != form.password_confirm {
        errors.add("password_confirm", "password_mismatch");
    }
    match (email, name, password) {
        (Some(email), Some(name), Some(password)) if errors.is_empty() => Some(ValidSignup {
            email,
            name,
            password,
        }),
        _ => None,
    }
}

/// Creates the account; a duplicate email becomes a form error.
async fn create_account(
    state: &AppState,
    valid: &ValidSignup,
    kind: UserKind,
    errors: &mut FormErrors,
) -> AppResult<Option<users::User>> {
    let hash = secrets::hash_password_blocking(valid.password.expose().to_owned()).await?;
    match users::create(&state.db, &valid.email, &valid.name, &hash, kind).await {
        Ok(user) => Ok(Some(user)),
        Err(CreateUserError::DuplicateEmail) => {
            errors.add("email", "email_taken");
            Ok(None)
        }
        Err(CreateUserError::Db(e)) => Err(e.into()),
    }
}

pub async fn signup(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    Form(form): Form<SignupForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    if let Some(valid) = validate_signup(&form, &mut errors) {
        if let Some(user) = create_account(&state, &valid, UserKind::Student, &mut errors).await? {
            auth::log_in(&session, &user).await?;
            flash(&session, "welcome").await?;
            return Ok(Redirect::to("/dashboard").into_response());
        }
    }
    Ok(with_errors(&SignupPage {
        ctx,
        email: form.email,
        display_name: form.display_name,
        errors,
        invite: None,
    }))
}

#[derive(Template)]
#[template(path = "accounts/login.html")]
pub struct LoginPage {
    pub ctx: PageCtx,
    pub email: String,
    pub next: String,
    pub error: Option<&'static str>,
    pub retry_minutes: i64,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn safe_next(next: Option<&str>) -> String {
    next.filter(|n| is_local_path(n))
        .unwrap_or("/dashboard")
        .to_owned()
}

pub async fn login_page(ctx: PageCtx, Query(q): Query<NextQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    if ctx.user.is_some() {
        return Redirect::to(&next).into_response();
    }
    render(&LoginPage {
        ctx,
        email: String::new(),
        next,
        error: None,
        retry_minutes: 0,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    ClientIp(ip): ClientIp,
    Form(form): Form<LoginForm>,
) -> AppResult<Response> {
    let next = safe_next(form.next.as_deref());
    let email = form.email.trim().to_lowercase();
    let page = |ctx, error, retry: i64| LoginPage {
        ctx,
        email: form.email.clone(),
        next: next.clone(),
        error: Some(error),
        retry_minutes: (retry + 59) / 60,
    };
    let blocked = match throttle::blocked_for(&state.db, Scope::Email, &email).await? {
        Some(s) => Some(s),
        None => throttle::blocked_for(&state.db, Scope::Ip, &ip).await?,
    };
    if let Some(retry_after) = blocked {
        let mut response = with_errors(&page(ctx, "login_throttled", retry_after));
        *response.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
        if let Ok(v) = retry_after.to_string().parse() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        return Ok(response);
    }
    let user = users::by_email(&state.db, &email).await?;
    let stored = user
        .as_ref()
        .filter(|u| !u.is_disabled())
        .map(|u| u.password_hash.0.clone());
    let ok = secrets::verify_password_blocking(form.password.clone(), stored).await?;
    match user {
        Some(user) if ok => {
            throttle::clear(&state.db, Scope::Email, &email).await?;
            auth::log_in(&session, &user).await?;
            Ok(Redirect::to(&next).into_response())
        }
        _ => {
            throttle::record_failure(&state.db, Scope::Email, &email).await?;
            throttle::record_failure(&state.db, Scope::Ip, &ip).await?;
            Ok(with_errors(&page(ctx, "login_failed", 0)))
        }
    }
}

pub async fn logout(session: Session) -> AppResult<Redirect> {
    auth::log_out(&session).await?;
    Ok(Redirect::to("/"))
}

async fn usable_invite(
    state: &AppState,
    token: &str,
) -> AppResult<(invites::Invitation, InviteView)> {
    let invite = invites::by_token(&state.db, token)
        .await?
        .filter(|i| i.is_usable(now()))
        .ok_or(AppError::NotFound)?;
    let org_name = match &invite.org_id {
        Some(id) => orgs::by_id(&state.db, id).await?.map(|o| o.name),
        None => None,
    };
    let view = InviteView {
        token: token.to_owned(),
        kind: invite.kind,
        org_name,
        email_locked: invite.email.is_some(),
    };
    Ok((invite, view))
}

/// `GET /invite/{token}`: sign up through an invitation.
pub async fn invite_page(
    State(state): State<AppState>,
    ctx: PageCtx,
    Path(token): Path<String>,
) -> AppResult<Response> {
    let (invite, view) = usable_invite(&state, &token).await?;
    Ok(render(&SignupPage {
        ctx,
        email: invite.email.clone().unwrap_or_default(),
        display_name: String::new(),
        errors: FormErrors::default(),
        invite: Some(view),
    }))
}

pub async fn accept_invite(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    Path(token): Path<String>,
    Form(mut form): Form<SignupForm>,
) -> AppResult<Response> {
    let (invite, view) = usable_invite(&state, &token).await?;
    if let Some(email) = &invite.email {
        form.email = email.clone();
    }
    let mut errors = FormErrors::default();
    if let Some(valid) = validate_signup(&form, &mut errors) {
        // Claim the invitation first, so two people cannot both use one link.
        if !invites::claim(&state.db, &invite.id).await? {
            return Err(AppError::Conflict("invite_used"));
        }
        match create_account(&state, &valid, invite.kind, &mut errors).await {
            Ok(Some(user)) => {
                invites::set_used_by(&state.db, &invite.id, &user.id).await?;
                if let Some(org_id) = &invite.org_id {
                    orgs::set_member(&state.db, org_id, &user.id, invite.org_role).await?;
                }
                auth::log_in(&session, &user).await?;
                flash(&session, "welcome").await?;
                return Ok(Redirect::to("/dashboard").into_response());
            }
            Ok(None) => invites::release(&state.db, &invite.id).await?,
            Err(e) => {
                invites::release(&state.db, &invite.id).await?;
                return Err(e);
            }
        }
    }
    Ok(with_errors(&SignupPage {
        ctx,
        email: form.email,
        display_name: form.display_name,
        errors,
        invite: Some(view),
    }))
}
