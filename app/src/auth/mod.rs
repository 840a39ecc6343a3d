//! Who is calling, and what they may do. Handlers state their callers through
//! the extractors here ([`CurrentUser`], [`SiteAdmin`], [`CourseCreator`],
//! [`CourseMember`], [`CourseStaff`], [`CourseInstructor`], [`OrgAdmin`]);
//! no access checks are scattered in handler bodies.

pub mod csrf;
pub mod store;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_sessions::Session;

use crate::db::courses::Course;
use crate::db::orgs::Org;
use crate::db::users::User;
use crate::db::{courses, orgs, tokens, users};
use crate::domain::{CourseRole, OrgRole, UserKind};
use crate::error::AppError;
use crate::state::AppState;

const SESSION_USER: &str = "user_id";

/// Who the request is from, set by [`authenticate`] for every request.
#[derive(Clone, Debug, Default)]
pub struct Authn {
    pub user: Option<User>,
}

/// Loads the caller: from a bearer token on `/api/` routes, from the session
/// cookie elsewhere. Disabled accounts count as anonymous.
pub async fn authenticate(
    State(state): State<AppState>,
    session: Session,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let user_id = if req.uri().path().starts_with("/api/") {
        match bearer(req.headers()) {
            Some(token) => tokens::authenticate(&state.db, token).await?,
            None => None,
        }
    } else {
        session.get::<String>(SESSION_USER).await.ok().flatten()
    };
    let user = match user_id {
        Some(id) => users::by_id(&state.db, &id)
            .await?
            .filter(|u| !u.is_disabled()),
        None => None,
    };
    req.extensions_mut().insert(Authn { user });
    Ok(next.run(req).await)
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Starts a logged-in session with a fresh id (so a planted id is useless).
pub async fn log_in(session: &Session, user: &User) -> Result<(), AppError> {
    session.cycle_id().await.map_err(session_error)?;
    session
        .insert(SESSION_USER, &user.id)
        .await
        .map_err(session_error)?;
    csrf::rotate(session).await?;
    Ok(())
}

/// Ends the session and removes it from the store.
pub async fn log_out(session: &Session) -> Result<(), AppError> {
    session.flush().await.map_err(session_error)
}

pub(crate) fn session_error(e: tower_sessions::session::Error) -> AppError {
    AppError::Internal(anyhow::anyhow!("session store: {e}"))
}

/// The client's address: the socket peer, or the first `X-Forwarded-For`
/// entry when the proxy is trusted.
#[derive(Clone, Debug)]
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if state.config.trust_proxy {
            if let Some(first) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
            {
                return Ok(ClientIp(first.trim().to_owned()));
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(ClientIp(peer))
    }
}

fn authn(parts: &Parts) -> Option<User> {
    parts.extensions.get::<Authn>().and_then(|a| a.user.clone())
}

fn login_required(parts: &Parts) -> AppError {
    let next = (parts.method == Method::GET)
        .then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned()))
        .flatten();
    AppError::LoginRequired { next }
}

/// The signed-in caller, if any.
pub struct MaybeUser(pub Option<User>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUser {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        Ok(MaybeUser(authn(parts)))
    }
}

/// Any signed-in user.
pub struct CurrentUser(pub User);

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        authn(parts)
            .map(CurrentUser)
            .ok_or_else(|| login_required(parts))
    }
}

/// A site administrator.
pub struct SiteAdmin(pub User);

impl<S: Send + Sync> FromRequestParts<S> for SiteAdmin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        match authn(parts) {
            Some(u) if u.is_admin() => Ok(SiteAdmin(u)),
            Some(_) => Err(AppError::Forbidden),
            None => Err(login_required(parts)),
        }
    }
}

/// A user who may create courses: instructors and site admins.
pub struct CourseCreator(pub User);

impl<S: Send + Sync> FromRequestParts<S> for CourseCreator {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        match authn(parts) {
            Some(u) if matches!(u.kind, UserKind::Instructor | UserKind::Admin) => {
                Ok(CourseCreator(u))
            }
            Some(_) => Err(AppError::Forbidden),
            None => Err(login_required(parts)),
        }
    }
}

/// Which course roles a course route admits (site admins are always admitted).
pub trait CoursePolicy {
    fn admits(role: CourseRole) -> bool;
}

pub struct AnyRole;
pub struct StaffRole;
pub struct InstructorRole;

impl CoursePolicy for AnyRole {
    fn admits(_: CourseRole) -> bool {
        true
    }
}
impl CoursePolicy for StaffRole {
    fn admits(role: CourseRole) -> bool {
        matches!(role, CourseRole::Instructor | CourseRole::Ta)
    }
}
impl CoursePolicy for InstructorRole {
    fn admits(role: CourseRole) -> bool {
        role == CourseRole::Instructor
    }
}

/// The course named by the `{course_id}` path segment, with a caller the
/// policy `P` admits. `role` is `None` for a site admin who is not enrolled.
pub struct InCourse<P> {
    pub user: User,
    pub course: Course,
    pub role: Option<CourseRole>,
    _policy: PhantomData<P>,
}

pub type CourseMember = InCourse<AnyRole>;
pub type CourseStaff = InCourse<StaffRole>;
pub type CourseInstructor = InCourse<InstructorRole>;

impl<P> InCourse<P> {
    pub fn is_staff(&self) -> bool {
        self.user.is_admin() || self.role.is_some_and(StaffRole::admits)
    }
    pub fn is_instructor(&self) -> bool {
        self.user.is_admin() || self.role == Some(CourseRole::Instructor)
    }
}

async fn path_param(parts: &mut Parts, state: &AppState, name: &str) -> Result<String, AppError> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map_err(|_| AppError::NotFound)?;
    params.get(name).cloned().ok_or(AppError::NotFound)
}

impl<P: CoursePolicy + Send + Sync> FromRequestParts<AppState> for InCourse<P> {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let user = authn(parts).ok_or_else(|| login_required(parts))?;
        let course_id = path_param(parts, state, "course_id").await?;
        let (course, role) = courses::with_role(&state.db, &course_id, &user.id)
            .await?
            .ok_or(AppError::NotFound)?;
        let admitted = user.is_admin() || role.is_some_and(P::admits);
        if !admitted {
            return Err(AppError::Forbidden);
        }
        Ok(InCourse {
            user,
            course,
            role,
            _policy: PhantomData,
        })
    }
}

/// An admin of the organisation named by the `{slug}` path segment (or a site admin).
pub struct OrgAdmin {
    pub user: User,
    pub org: Org,
}

impl FromRequestParts<AppState> for OrgAdmin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let user = authn(parts).ok_or_else(|| login_required(parts))?;
        let slug = path_param(parts, state, "slug").await?;
        let org = orgs::by_slug(&state.db, &slug)
            .await?
            .ok_or(AppError::NotFound)?;
        let role = orgs::role_of(&state.db, &org.id, &user.id).await?;
        if user.is_admin() || role == Some(OrgRole::Admin) {
            Ok(OrgAdmin { user, org })
        } else {
            Err(AppError::Forbidden)
        }
    }
}
