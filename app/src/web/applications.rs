//! Applications to internships and visiting positions: applying (with a CV
//! for internships), the applicant's view of their status, and the posting
//! side's pipeline with internal notes. Every move is kept in the history.

use askama::Template;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::postings::{self, Access};
use super::templates::{flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::CurrentUser;
use crate::db::applications::{Application, ApplicationEvent, ApplyRefusal, Note};
use crate::db::postings::Posting;
use crate::db::users::User;
use crate::db::{applications, notifications, now, orgs};
use crate::domain::{
    parse_optional_text, ApplicationState, MessageKey, OrgKind, PostingKind, UserKind,
};
use crate::error::{AppError, AppResult};
use crate::files::{self, FileType};
use crate::state::AppState;

pub fn state_label(state: &ApplicationState) -> &'static str {
    match state {
        ApplicationState::Applied => "Applied",
        ApplicationState::UnderReview => "Under review",
        ApplicationState::Interview => "Interview",
        ApplicationState::Offer => "Offer",
        ApplicationState::Accepted => "Accepted",
        ApplicationState::Declined => "Declined",
        ApplicationState::Withdrawn => "Withdrawn",
        ApplicationState::Rejected => "Rejected",
    }
}

/// Why this user may not apply to this posting (None: they may).
pub async fn cannot_apply(
    state: &AppState,
    user: &User,
    posting: &Posting,
    access: &Access,
) -> AppResult<Option<MessageKey>> {
    if posting.kind == PostingKind::Project {
        return Ok(Some("apply_project_as_team"));
    }
    if !posting.accepts_applications(now()) {
        return Ok(Some("applications_closed"));
    }
    if access.posting_side {
        return Ok(Some("apply_own_posting"));
    }
    if !access.audience {
        return Ok(Some("apply_not_audience"));
    }
    let kind_ok = match posting.kind {
        PostingKind::Internship => user.kind == UserKind::Student,
        PostingKind::Visiting => orgs::of_user(&state.db, &user.id)
            .await?
            .iter()
            .any(|m| m.kind == OrgKind::Company),
        PostingKind::Project => false,
    };
    Ok((!kind_ok).then_some("apply_not_audience"))
}

/// `POST /postings/{id}/apply` (multipart: `statement`, `cv`).
pub async fn apply(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<Response> {
    let (posting, access) = postings::visible(&state, &user, &id).await?;
    if let Some(key) = cannot_apply(&state, &user, &posting, &access).await? {
        return Err(AppError::Conflict(key));
    }
    let mut multipart = multipart.map_err(|_| AppError::BadRequest("not_multipart"))?;
    let mut statement = String::new();
    let mut cv: Option<(String, Vec<u8>)> = None;
    let mut errors = FormErrors::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|_| AppError::BadRequest("upload_failed"))?
    {
        match field.name() {
            Some("statement") => {
                statement = field
                    .text()
                    .await
                    .map_err(|_| AppError::BadRequest("upload_failed"))?;
            }
            Some("cv") => {
                let name = field.file_name().unwrap_or_default().to_owned();
                let bytes = super::files::read_capped(field, files::MAX_CV_BYTES).await;
                match bytes {
                    Ok(b) if !name.is_empty() || !b.is_empty() => cv = Some((name, b)),
                    Ok(_) => {}
                    Err(key) => errors.add("cv", key),
                }
            }
            _ => {}
        }
    }
    let statement = match parse_optional_text(&statement, 5000) {
        Ok(s) if !s.is_empty() => Some(s),
        Ok(_) => {
            errors.add("statement", "statement_required");
            None
        }
        Err(key) => {
            errors.add("statement", key);
            None
        }
    };
    let upload = match cv {
        Some((name, bytes)) => {
            match files::check(&name, bytes, &[FileType::Pdf], files::MAX_CV_BYTES) {
                Ok(u) => Some(u),
                Err(key) => {
                    errors.add("cv", key);
                    None
                }
            }
        }
        None => {
            if posting.kind == PostingKind::Internship && !errors.has("cv") {
                errors.add("cv", "cv_required");
            }
            None
        }
    };
    let statement = match statement {
        Some(s) if errors.is_empty() => s,
        other => {
            let page =
                postings::show_page(&state, ctx, &user, &id, errors, other.unwrap_or_default())
                    .await?;
            return Ok(with_errors(&page));
        }
    };
    let data_dir = state.config.data_dir.clone();
    let stored = applications::apply(
        &state.db,
        &posting.id,
        &user.id,
        &statement,
        upload.as_ref(),
        || async {
            match &upload {
                Some(u) => files::store(&data_dir, u).await,
                None => Ok(()),
            }
        },
    )
    .await?;
    let app_id = match stored {
        Ok(app_id) => app_id,
        Err(ApplyRefusal::AlreadyApplied) => return Err(AppError::Conflict("already_applied")),
    };
    let members = orgs::member_ids(&state.db, &posting.org_id).await?;
    notifications::notify(
        &state.db.pool,
        &members,
        &format!("{} applied to “{}”", user.display_name, posting.title),
        &format!("/applications/{app_id}"),
    )
    .await?;
    flash(&session, "application_sent").await?;
    Ok(Redirect::to(&format!("/applications/{app_id}")).into_response())
}

/// Who is looking at an application.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Applicant,
    /// A member of the posting organisation, or a site admin.
    Posting,
}

async fn application_for(
    state: &AppState,
    user: &User,
    id: &str,
) -> AppResult<(Application, Side)> {
    let app = applications::get(&state.db, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if app.applicant_id == user.id {
        return Ok((app, Side::Applicant));
    }
    let member = orgs::role_of(&state.db, &app.posting_org_id, &user.id)
        .await?
        .is_some();
    if member || user.is_admin() {
        Ok((app, Side::Posting))
    } else {
        Err(AppError::Forbidden)
    }
}

#[derive(Template)]
#[template(path = "applications/show.html")]
pub struct ShowPage {
    pub ctx: PageCtx,
    pub app: Application,
    pub side: Side,
    pub events: Vec<ApplicationEvent>,
    /// Internal notes: empty, and never loaded, for the applicant.
    pub notes: Vec<Note>,
    pub moves: &'static [ApplicationState],
    pub note_error: Option<MessageKey>,
}

impl ShowPage {
    pub fn is_posting_side(&self) -> bool {
        self.side == Side::Posting
    }
}

async fn show_page(
    state: &AppState,
    ctx: PageCtx,
    user: &User,
    id: &str,
    note_error: Option<MessageKey>,
) -> AppResult<ShowPage> {
    let (app, side) = application_for(state, user, id).await?;
    let events = applications::events(&state.db, &app.id).await?;
    let (notes, moves) = match side {
        Side::Posting => (
            applications::notes(&state.db, &app.id).await?,
            app.state.reviewer_moves(),
        ),
        Side::Applicant => (Vec::new(), app.state.applicant_moves()),
    };
    Ok(ShowPage {
        ctx,
        app,
        side,
        events,
        notes,
        moves,
        note_error,
    })
}

/// `GET /applications/{id}`
pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Response> {
    Ok(render(&show_page(&state, ctx, &user, &id, None).await?))
}

#[derive(Deserialize)]
pub struct MoveForm {
    #[serde(default)]
    pub to: String,
}

/// `POST /applications/{id}/move`: the posting side moves it along the
/// pipeline; the applicant withdraws, or accepts or declines an offer.
pub async fn move_to(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Form(form): Form<MoveForm>,
) -> AppResult<Redirect> {
    let (app, side) = application_for(&state, &user, &id).await?;
    let to = ApplicationState::parse(&form.to).ok_or(AppError::BadRequest("state_invalid"))?;
    let allowed = match side {
        Side::Posting => app.state.reviewer_moves(),
        Side::Applicant => app.state.applicant_moves(),
    };
    if !allowed.contains(&to)
        || !applications::move_to(&state.db, &app.id, app.state, to, &user.id).await?
    {
        return Err(AppError::Refused {
            code: "application_state",
            message: format!(
                "This application is “{}”; it cannot move to “{}” from there{}.",
                state_label(&app.state),
                state_label(&to),
                if side == Side::Applicant && allowed.is_empty() {
                    ""
                } else {
                    " by you"
                }
            ),
        });
    }
    let link = format!("/applications/{}", app.id);
    match side {
        Side::Posting => {
            notifications::notify(
                &state.db.pool,
                std::slice::from_ref(&app.applicant_id),
                &format!(
                    "Your application to “{}” is now: {}",
                    app.posting_title,
                    state_label(&to)
                ),
                &link,
            )
            .await?
        }
        Side::Applicant => {
            let members = orgs::member_ids(&state.db, &app.posting_org_id).await?;
            notifications::notify(
                &state.db.pool,
                &members,
                &format!(
                    "{} {} (“{}”)",
                    app.applicant_name,
                    match to {
                        ApplicationState::Accepted => "accepted your offer",
                        ApplicationState::Declined => "declined your offer",
                        _ => "withdrew their application",
                    },
                    app.posting_title
                ),
                &link,
            )
            .await?
        }
    }
    flash(&session, "application_moved").await?;
    Ok(Redirect::to(&link))
}

#[derive(Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    pub body: String,
}

/// `POST /applications/{id}/notes`: an internal note, posting side only.
pub async fn add_note(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Form(form): Form<NoteForm>,
) -> AppResult<Response> {
    let (app, side) = application_for(&state, &user, &id).await?;
    if side != Side::Posting {
        return Err(AppError::Forbidden);
    }
    match parse_optional_text(&form.body, 5000) {
        Ok(body) if !body.is_empty() => {
            applications::add_note(&state.db, &app.id, &user.id, &body).await?;
            Ok(Redirect::to(&format!("/applications/{}#notes", app.id)).into_response())
        }
        Ok(_) => Ok(with_errors(
            &show_page(&state, ctx, &user, &id, Some("note_required")).await?,
        )),
        Err(key) => Ok(with_errors(
            &show_page(&state, ctx, &user, &id, Some(key)).await?,
        )),
    }
}

/// `GET /applications/{id}/cv`: the applicant's CV, to the applicant and the
/// posting side.
pub async fn cv(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let (app, _) = application_for(&state, &user, &id).await?;
    let file_id = app.cv_file_id.ok_or(AppError::NotFound)?;
    let file = crate::db::files::get(&state.db, &file_id)
        .await?
        .ok_or(AppError::NotFound)?;
    super::files::download(&state, &file.name, &file.content_type, &file.sha256).await
}

#[derive(Template)]
#[template(path = "applications/index.html")]
pub struct MinePage {
    pub ctx: PageCtx,
    pub applications: Vec<Application>,
}

/// `GET /applications`: the user's own applications and their status.
pub async fn mine(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
) -> AppResult<Response> {
    let applications = applications::of_applicant(&state.db, &user.id).await?;
    Ok(render(&MinePage { ctx, applications }))
}
