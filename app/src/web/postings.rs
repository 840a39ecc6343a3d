//! Postings: joint projects and internships (a company posting to a
//! university's students) and visiting-engineer positions (a university
//! posting to connected companies). Search, the posting page, authoring, and
//! the approval workflow: draft → submitted → approved | changes_requested
//! → open → closed | expired.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::templates::{flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::CurrentUser;
use crate::db::applications::Application;
use crate::db::orgs::{Member, Org};
use crate::db::postings::{Filter, Posting, PostingEvent, PostingFields, Viewer};
use crate::db::users::User;
use crate::db::{applications, notifications, now, orgs, postings};
use crate::domain::{
    parse_date, parse_description, parse_optional_text, parse_title, ConnectionState, MessageKey,
    OrgKind, OrgRole, PostingKind, PostingState, Skills,
};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// What one user may do with one posting.
pub struct Access {
    pub is_admin: bool,
    /// A member of the posting organisation (the company, or for visiting
    /// positions the university).
    pub posting_side: bool,
    /// An admin of the university the posting addresses: the reviewer.
    pub reviewer: bool,
    /// Someone the posting is for, once it is open: the university's
    /// students and members (projects, internships) or members of companies
    /// approved with the university (visiting positions).
    pub audience: bool,
}

impl Access {
    pub async fn of(state: &AppState, user: &User, posting: &Posting) -> AppResult<Self> {
        let db = &state.db;
        let posting_role = orgs::role_of(db, &posting.org_id, &user.id).await?;
        let university_role = orgs::role_of(db, &posting.university_id, &user.id).await?;
        let audience = match posting.kind {
            PostingKind::Project | PostingKind::Internship => orgs::universities_of(db, &user.id)
                .await?
                .contains(&posting.university_id),
            PostingKind::Visiting => {
                let mut connected = false;
                for m in orgs::of_user(db, &user.id).await? {
                    if m.kind == OrgKind::Company
                        && orgs::connection_state(db, &m.id, &posting.university_id).await?
                            == Some(ConnectionState::Approved)
                    {
                        connected = true;
                        break;
                    }
                }
                connected
            }
        };
        Ok(Access {
            is_admin: user.is_admin(),
            posting_side: posting_role.is_some(),
            reviewer: university_role == Some(OrgRole::Admin),
            audience,
        })
    }

    pub fn can_view(&self, posting: &Posting) -> bool {
        let published = matches!(
            posting.state,
            PostingState::Open | PostingState::Closed | PostingState::Expired
        );
        self.is_admin
            || self.posting_side
            || (self.reviewer && posting.state != PostingState::Draft)
            || (self.audience && published)
    }

    /// May see and move the posting's applications and their internal notes.
    pub fn manages_applications(&self) -> bool {
        self.is_admin || self.posting_side
    }
}

/// Loads a posting the user may see (404 otherwise, so that drafts of other
/// organisations do not reveal that they exist).
pub async fn visible(state: &AppState, user: &User, id: &str) -> AppResult<(Posting, Access)> {
    let posting = postings::get(&state.db, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let access = Access::of(state, user, &posting).await?;
    if !access.can_view(&posting) {
        return Err(AppError::NotFound);
    }
    Ok((posting, access))
}

pub fn kind_label(kind: &PostingKind) -> &'static str {
    match kind {
        PostingKind::Project => "Joint project",
        PostingKind::Internship => "Internship",
        PostingKind::Visiting => "Visiting engineer",
    }
}

pub fn state_label(state: &PostingState) -> &'static str {
    match state {
        PostingState::Draft => "Draft",
        PostingState::Submitted => "Awaiting approval",
        PostingState::Approved => "Approved",
        PostingState::ChangesRequested => "Changes requested",
        PostingState::Open => "Open",
        PostingState::Closed => "Closed",
        PostingState::Expired => "Expired",
    }
}

pub fn skills_of(posting: &Posting) -> Vec<String> {
    Skills::from_stored(&posting.skills).list().to_vec()
}

pub fn period(posting: &Posting) -> String {
    match (&posting.starts_on, &posting.ends_on) {
        (Some(a), Some(b)) => format!("{a} – {b}"),
        (Some(a), None) => format!("from {a}"),
        (None, Some(b)) => format!("until {b}"),
        (None, None) => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Search

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub skill: String,
    #[serde(default)]
    pub org: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub until: String,
}

#[derive(Template)]
#[template(path = "postings/index.html")]
pub struct SearchPage {
    pub ctx: PageCtx,
    pub query: SearchQuery,
    pub results: Vec<Posting>,
    pub orgs: Vec<(String, String)>,
    pub errors: FormErrors,
    /// Organisations the user may post for: (slug, name, kinds they may post).
    pub can_post: Vec<(String, String, Vec<PostingKind>)>,
}

/// `GET /postings`: open postings the user may see, with filters.
pub async fn index(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Query(query): Query<SearchQuery>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let skill = errors
        .check("skill", Skills::parse(&query.skill))
        .and_then(|s| s.list().first().cloned())
        .unwrap_or_default();
    let from = errors.check("from", parse_date(&query.from)).flatten();
    let until = errors.check("until", parse_date(&query.until)).flatten();
    let filter = Filter {
        text: query.q.chars().take(200).collect(),
        skill,
        org_id: query.org.clone(),
        kind: PostingKind::parse(&query.kind),
        from,
        until,
    };
    let results = postings::search(
        &state.db,
        &Viewer {
            user_id: &user.id,
            is_admin: user.is_admin(),
        },
        &filter,
    )
    .await?;
    let orgs = postings::posting_orgs(&state.db).await?;
    let can_post = orgs::of_user(&state.db, &user.id)
        .await?
        .into_iter()
        .map(|m| {
            let kinds = kinds_for(m.kind);
            (m.slug, m.name, kinds)
        })
        .collect();
    Ok(render(&SearchPage {
        ctx,
        query,
        results,
        orgs,
        errors,
        can_post,
    }))
}

fn kinds_for(org: OrgKind) -> Vec<PostingKind> {
    PostingKind::ALL
        .iter()
        .copied()
        .filter(|k| k.posted_by() == org)
        .collect()
}

// ---------------------------------------------------------------------------
// Authoring

#[derive(Deserialize, Default, Clone)]
pub struct PostingForm {
    #[serde(default)]
    pub university_id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub requirements: String,
    #[serde(default)]
    pub skills: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub starts_on: String,
    #[serde(default)]
    pub ends_on: String,
    #[serde(default)]
    pub compensation: String,
    #[serde(default)]
    pub apply_by: String,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub duration_weeks: String,
    #[serde(default)]
    pub team_size: String,
    #[serde(default)]
    pub mentor_id: String,
    #[serde(default)]
    pub nda_required: Option<String>,
}

impl PostingForm {
    fn of(p: &Posting) -> Self {
        PostingForm {
            university_id: p.university_id.clone(),
            title: p.title.clone(),
            body: p.body.clone(),
            requirements: p.requirements.clone(),
            skills: Skills::from_stored(&p.skills).display(),
            role: p.role.clone(),
            location: p.location.clone(),
            remote: (p.remote != 0).then(|| "on".into()),
            starts_on: p.starts_on.clone().unwrap_or_default(),
            ends_on: p.ends_on.clone().unwrap_or_default(),
            compensation: p.compensation.clone(),
            apply_by: p.apply_by.map(date_of).unwrap_or_default(),
            dataset: p.dataset.clone(),
            duration_weeks: p.duration_weeks.map(|n| n.to_string()).unwrap_or_default(),
            team_size: p.team_size.map(|n| n.to_string()).unwrap_or_default(),
            mentor_id: p.mentor_id.clone().unwrap_or_default(),
            nda_required: (p.nda_required != 0).then(|| "on".into()),
        }
    }
    pub fn remote_checked(&self) -> bool {
        self.remote.is_some()
    }
    pub fn nda_checked(&self) -> bool {
        self.nda_required.is_some()
    }
}

/// The last second (UTC) of an ISO date.
fn end_of_day(date: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(date, format).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() + 86_399)
}

fn date_of(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

fn parse_count(
    raw: &str,
    range: std::ops::RangeInclusive<i64>,
    key: MessageKey,
) -> Result<Option<i64>, MessageKey> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<i64>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(key),
    }
}

/// Checks a posting form; the fields to store, or the errors by field.
pub fn validate(
    kind: PostingKind,
    form: &PostingForm,
    mentors: &[Member],
    errors: &mut FormErrors,
) -> Option<PostingFields> {
    let title = errors.check("title", parse_title(&form.title));
    let body = errors.check(
        "body",
        parse_description(&form.body).and_then(|b| {
            if b.is_empty() {
                Err("body_required")
            } else {
                Ok(b)
            }
        }),
    );
    let requirements = errors.check("requirements", parse_description(&form.requirements));
    let skills = errors.check("skills", Skills::parse(&form.skills));
    let role = errors.check("role", parse_optional_text(&form.role, 200));
    let location = errors.check("location", parse_optional_text(&form.location, 200));
    let compensation = errors.check("compensation", parse_optional_text(&form.compensation, 200));
    let dataset = errors.check("dataset", parse_optional_text(&form.dataset, 2000));
    let starts_on = errors.check("starts_on", parse_date(&form.starts_on));
    let ends_on = errors.check("ends_on", parse_date(&form.ends_on));
    if let (Some(Some(a)), Some(Some(b))) = (&starts_on, &ends_on) {
        if b < a {
            errors.add("ends_on", "period_invalid");
        }
    }
    let apply_by = errors
        .check("apply_by", parse_date(&form.apply_by))
        .map(|d| d.as_deref().and_then(end_of_day));
    let (duration_weeks, team_size, mentor_id) = if kind == PostingKind::Project {
        let weeks = errors.check(
            "duration_weeks",
            parse_count(&form.duration_weeks, 1..=104, "duration_invalid")
                .and_then(|n| n.ok_or("duration_invalid").map(Some)),
        );
        let size = errors.check(
            "team_size",
            parse_count(&form.team_size, 1..=20, "team_size_invalid")
                .and_then(|n| n.ok_or("team_size_invalid").map(Some)),
        );
        let mentor = if form.mentor_id.is_empty() {
            errors.add("mentor_id", "mentor_required");
            None
        } else if mentors.iter().any(|m| m.user_id == form.mentor_id) {
            Some(Some(form.mentor_id.clone()))
        } else {
            errors.add("mentor_id", "mentor_required");
            None
        };
        (weeks, size, mentor)
    } else {
        (Some(None), Some(None), Some(None))
    };
    if kind == PostingKind::Internship && form.role.trim().is_empty() {
        errors.add("role", "role_required");
    }
    if !errors.is_empty() {
        return None;
    }
    Some(PostingFields {
        title: title?,
        body: body?,
        requirements: requirements?,
        skills: skills?.stored(),
        role: role?,
        location: location?,
        remote: form.remote.is_some(),
        starts_on: starts_on?,
        ends_on: ends_on?,
        compensation: compensation?,
        apply_by: apply_by?,
        dataset: dataset?,
        duration_weeks: duration_weeks?,
        team_size: team_size?,
        mentor_id: mentor_id?,
        nda_required: kind == PostingKind::Project && form.nda_required.is_some(),
    })
}

#[derive(Template)]
#[template(path = "postings/edit.html")]
pub struct EditPage {
    pub ctx: PageCtx,
    pub kind: PostingKind,
    pub org: Org,
    /// `None` when creating.
    pub posting_id: Option<String>,
    /// Universities this company may post to (company postings only).
    pub universities: Vec<Org>,
    pub mentors: Vec<Member>,
    pub form: PostingForm,
    pub errors: FormErrors,
}

impl EditPage {
    pub fn is_project(&self) -> bool {
        self.kind == PostingKind::Project
    }
    pub fn by_company(&self) -> bool {
        self.kind.posted_by() == OrgKind::Company
    }
    pub fn action(&self) -> String {
        match &self.posting_id {
            Some(id) => format!("/postings/{id}/edit"),
            None => format!("/orgs/{}/postings/new?kind={}", self.org.slug, self.kind),
        }
    }
}

/// The organisation and the user's right to post for it.
async fn posting_org(state: &AppState, user: &User, slug: &str) -> AppResult<Org> {
    let org = orgs::by_slug(&state.db, slug)
        .await?
        .ok_or(AppError::NotFound)?;
    let member = orgs::role_of(&state.db, &org.id, &user.id).await?.is_some();
    if !member && !user.is_admin() {
        return Err(AppError::Forbidden);
    }
    Ok(org)
}

async fn edit_page(
    state: &AppState,
    ctx: PageCtx,
    kind: PostingKind,
    org: Org,
    posting_id: Option<String>,
    form: PostingForm,
    errors: FormErrors,
) -> AppResult<EditPage> {
    let universities = match kind.posted_by() {
        OrgKind::Company => orgs::approved_universities(&state.db, &org.id).await?,
        OrgKind::University => Vec::new(),
    };
    let mentors = orgs::members(&state.db, &org.id).await?;
    Ok(EditPage {
        ctx,
        kind,
        org,
        posting_id,
        universities,
        mentors,
        form,
        errors,
    })
}

#[derive(Deserialize)]
pub struct KindQuery {
    #[serde(default)]
    pub kind: String,
}

fn kind_for(org: &Org, raw: &str) -> AppResult<PostingKind> {
    let kind = PostingKind::parse(raw).ok_or(AppError::BadRequest("kind_invalid"))?;
    if kind.posted_by() != org.kind {
        return Err(AppError::BadRequest("kind_invalid"));
    }
    Ok(kind)
}

/// `GET /orgs/{slug}/postings/new?kind=…`
pub async fn new_page(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(slug): Path<String>,
    Query(q): Query<KindQuery>,
) -> AppResult<Response> {
    let org = posting_org(&state, &user, &slug).await?;
    let kind = kind_for(&org, &q.kind)?;
    let page = edit_page(
        &state,
        ctx,
        kind,
        org,
        None,
        PostingForm::default(),
        FormErrors::default(),
    )
    .await?;
    Ok(render(&page))
}

/// The university a new posting addresses: for company postings one the
/// company is approved with; for visiting positions the university itself.
async fn addressed_university(
    state: &AppState,
    org: &Org,
    kind: PostingKind,
    form: &PostingForm,
    errors: &mut FormErrors,
) -> AppResult<Option<String>> {
    match kind.posted_by() {
        OrgKind::University => Ok(Some(org.id.clone())),
        OrgKind::Company => {
            let approved = orgs::connection_state(&state.db, &org.id, &form.university_id).await?
                == Some(ConnectionState::Approved);
            if approved {
                Ok(Some(form.university_id.clone()))
            } else {
                errors.add("university_id", "university_not_connected");
                Ok(None)
            }
        }
    }
}

/// `POST /orgs/{slug}/postings/new?kind=…`: saves a draft.
pub async fn create(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(slug): Path<String>,
    Query(q): Query<KindQuery>,
    Form(form): Form<PostingForm>,
) -> AppResult<Response> {
    let org = posting_org(&state, &user, &slug).await?;
    let kind = kind_for(&org, &q.kind)?;
    let mut errors = FormErrors::default();
    let university = addressed_university(&state, &org, kind, &form, &mut errors).await?;
    let mentors = orgs::members(&state.db, &org.id).await?;
    let fields = validate(kind, &form, &mentors, &mut errors);
    let (Some(university), Some(fields)) = (university, fields) else {
        let page = edit_page(&state, ctx, kind, org, None, form, errors).await?;
        return Ok(with_errors(&page));
    };
    let id = postings::create(&state.db, kind, &org.id, &university, &fields, &user.id).await?;
    flash(&session, "posting_saved").await?;
    Ok(Redirect::to(&format!("/postings/{id}")).into_response())
}

/// The posting, for one of its organisation's members (or a site admin).
async fn own_posting(state: &AppState, user: &User, id: &str) -> AppResult<(Posting, Access)> {
    let (posting, access) = visible(state, user, id).await?;
    if !(access.posting_side || access.is_admin) {
        return Err(AppError::Forbidden);
    }
    Ok((posting, access))
}

/// `GET /postings/{id}/edit`
pub async fn edit(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let (posting, _) = own_posting(&state, &user, &id).await?;
    if !posting.is_editable() {
        return Err(AppError::Conflict("posting_not_editable"));
    }
    let org = orgs::by_id(&state.db, &posting.org_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let form = PostingForm::of(&posting);
    let page = edit_page(
        &state,
        ctx,
        posting.kind,
        org,
        Some(posting.id),
        form,
        FormErrors::default(),
    )
    .await?;
    Ok(render(&page))
}

/// `POST /postings/{id}/edit`
pub async fn save(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Form(mut form): Form<PostingForm>,
) -> AppResult<Response> {
    let (posting, _) = own_posting(&state, &user, &id).await?;
    if !posting.is_editable() {
        return Err(AppError::Conflict("posting_not_editable"));
    }
    // The addressed university is fixed once created.
    form.university_id = posting.university_id.clone();
    let mentors = orgs::members(&state.db, &posting.org_id).await?;
    let mut errors = FormErrors::default();
    let Some(fields) = validate(posting.kind, &form, &mentors, &mut errors) else {
        let org = orgs::by_id(&state.db, &posting.org_id)
            .await?
            .ok_or(AppError::NotFound)?;
        let page = edit_page(&state, ctx, posting.kind, org, Some(id), form, errors).await?;
        return Ok(with_errors(&page));
    };
    if !postings::update(&state.db, &id, &fields).await? {
        return Err(AppError::Conflict("posting_not_editable"));
    }
    flash(&session, "posting_saved").await?;
    Ok(Redirect::to(&format!("/postings/{id}")).into_response())
}

// ---------------------------------------------------------------------------
// The posting page

#[derive(Template)]
#[template(path = "postings/show.html")]
pub struct ShowPage {
    pub ctx: PageCtx,
    pub posting: Posting,
    pub body_html: String,
    pub requirements_html: String,
    pub access: Access,
    pub events: Vec<PostingEvent>,
    /// The viewer's own application, if any.
    pub mine: Option<Application>,
    pub applications: Vec<Application>,
    pub may_apply: bool,
    /// Why the viewer cannot apply, when they are in the audience.
    pub cannot_apply: Option<MessageKey>,
    pub connection_ok: bool,
    /// Errors of the form sent last: the application, or a review comment.
    pub errors: FormErrors,
    pub statement: String,
}

impl ShowPage {
    pub fn is_project(&self) -> bool {
        self.posting.kind == PostingKind::Project
    }
    pub fn needs_cv(&self) -> bool {
        self.posting.kind == PostingKind::Internship
    }
    pub fn can_edit(&self) -> bool {
        (self.access.posting_side || self.access.is_admin) && self.posting.is_editable()
    }
    pub fn can_submit(&self) -> bool {
        self.can_edit()
    }
    pub fn can_review(&self) -> bool {
        (self.access.reviewer || self.access.is_admin)
            && self.posting.state == PostingState::Submitted
    }
    pub fn can_open(&self) -> bool {
        (self.access.posting_side || self.access.is_admin)
            && self.posting.state == PostingState::Approved
    }
    pub fn can_close(&self) -> bool {
        (self.access.posting_side || self.access.reviewer || self.access.is_admin)
            && matches!(
                self.posting.state,
                PostingState::Open | PostingState::Approved
            )
    }
    pub fn last_review_comment(&self) -> Option<&str> {
        self.events
            .iter()
            .rev()
            .find(|e| e.to_state == PostingState::ChangesRequested)
            .map(|e| e.comment.as_str())
    }
}

/// Whether the posting organisation may post to the addressed university:
/// always for a university's own postings; for a company, only while its
/// connection is approved.
async fn connected(state: &AppState, posting: &Posting) -> AppResult<bool> {
    Ok(match posting.kind.posted_by() {
        OrgKind::University => true,
        OrgKind::Company => {
            orgs::connection_state(&state.db, &posting.org_id, &posting.university_id).await?
                == Some(ConnectionState::Approved)
        }
    })
}

/// Refuses a move of a company posting whose connection is not approved.
async fn ensure_connected(state: &AppState, posting: &Posting) -> AppResult<()> {
    if connected(state, posting).await? {
        return Ok(());
    }
    Err(refused(
        "not_connected",
        format!(
            "{} is not approved to post to {} students. A company admin asks to connect on the company's page; a university admin approves it.",
            posting.org_name, posting.university_name
        ),
    ))
}

pub async fn show_page(
    state: &AppState,
    ctx: PageCtx,
    user: &User,
    id: &str,
    errors: FormErrors,
    statement: String,
) -> AppResult<ShowPage> {
    let (posting, access) = visible(state, user, id).await?;
    let events = postings::events(&state.db, &posting.id).await?;
    let mine = applications::of_posting_for(&state.db, &posting.id, &user.id).await?;
    let applications = if access.manages_applications() {
        applications::of_posting(&state.db, &posting.id).await?
    } else {
        Vec::new()
    };
    let cannot_apply = if posting.kind == PostingKind::Project {
        None
    } else {
        super::applications::cannot_apply(state, user, &posting, &access).await?
    };
    let may_apply = access.audience && cannot_apply.is_none() && mine.is_none();
    let connection_ok = connected(state, &posting).await?;
    Ok(ShowPage {
        ctx,
        body_html: super::markdown::render(&posting.body),
        requirements_html: super::markdown::render(&posting.requirements),
        posting,
        access,
        events,
        mine,
        applications,
        may_apply,
        cannot_apply,
        connection_ok,
        errors,
        statement,
    })
}

/// `GET /postings/{id}`
pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let page = show_page(
        &state,
        ctx,
        &user,
        &id,
        FormErrors::default(),
        String::new(),
    )
    .await?;
    Ok(render(&page))
}

// ---------------------------------------------------------------------------
// The workflow

#[derive(Deserialize, Default)]
pub struct ReviewForm {
    #[serde(default)]
    pub comment: String,
}

/// `POST /postings/{id}/submit`: the posting side asks for approval.
pub async fn submit(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let (posting, _) = own_posting(&state, &user, &id).await?;
    ensure_connected(&state, &posting).await?;
    move_posting(
        &state,
        &posting,
        &[PostingState::Draft, PostingState::ChangesRequested],
        PostingState::Submitted,
        &user,
        "",
    )
    .await?;
    let admins = orgs::admin_ids(&state.db, &posting.university_id).await?;
    notifications::notify(
        &state.db.pool,
        &admins,
        &format!(
            "{} submitted “{}” for approval",
            posting.org_name, posting.title
        ),
        &format!("/postings/{}", posting.id),
    )
    .await?;
    flash(&session, "posting_submitted").await?;
    Ok(Redirect::to(&format!("/postings/{id}")))
}

fn refused(code: &'static str, message: String) -> AppError {
    AppError::Refused { code, message }
}

/// Applies a move, or explains why it is not allowed from the current state.
async fn move_posting(
    state: &AppState,
    posting: &Posting,
    from: &[PostingState],
    to: PostingState,
    user: &User,
    comment: &str,
) -> AppResult<()> {
    if postings::transition(&state.db, &posting.id, from, to, &user.id, comment).await? {
        return Ok(());
    }
    let now_state = postings::get(&state.db, &posting.id)
        .await?
        .map_or(posting.state, |p| p.state);
    Err(refused(
        "posting_state",
        format!(
            "This posting is {}; it cannot become {} from there.",
            state_label(&now_state).to_lowercase(),
            state_label(&to).to_lowercase()
        ),
    ))
}

/// The reviewer: an admin of the addressed university (or a site admin).
async fn reviewed_posting(state: &AppState, user: &User, id: &str) -> AppResult<Posting> {
    let (posting, access) = visible(state, user, id).await?;
    if !(access.reviewer || access.is_admin) {
        return Err(AppError::Forbidden);
    }
    Ok(posting)
}

/// `POST /postings/{id}/approve`
pub async fn approve(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> AppResult<Redirect> {
    let posting = reviewed_posting(&state, &user, &id).await?;
    ensure_connected(&state, &posting).await?;
    let comment = parse_optional_text(&form.comment, 2000).map_err(AppError::BadRequest)?;
    move_posting(
        &state,
        &posting,
        &[PostingState::Submitted],
        PostingState::Approved,
        &user,
        &comment,
    )
    .await?;
    notify_posting_side(
        &state,
        &posting,
        &format!("“{}” was approved; open it for applications", posting.title),
    )
    .await?;
    flash(&session, "posting_approved").await?;
    Ok(Redirect::to(&format!("/postings/{id}")))
}

/// `POST /postings/{id}/request-changes`: back to the author with comments.
pub async fn request_changes(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> AppResult<Response> {
    let posting = reviewed_posting(&state, &user, &id).await?;
    let comment = match parse_optional_text(&form.comment, 2000) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            let mut errors = FormErrors::default();
            errors.add("comment", "comment_required");
            let page = show_page(&state, ctx, &user, &id, errors, String::new()).await?;
            return Ok(with_errors(&page));
        }
        Err(key) => return Err(AppError::BadRequest(key)),
    };
    move_posting(
        &state,
        &posting,
        &[PostingState::Submitted],
        PostingState::ChangesRequested,
        &user,
        &comment,
    )
    .await?;
    notify_posting_side(
        &state,
        &posting,
        &format!("Changes requested on “{}”: {comment}", posting.title),
    )
    .await?;
    flash(&session, "posting_changes_requested").await?;
    Ok(Redirect::to(&format!("/postings/{id}")).into_response())
}

async fn notify_posting_side(state: &AppState, posting: &Posting, message: &str) -> AppResult<()> {
    let members = orgs::member_ids(&state.db, &posting.org_id).await?;
    notifications::notify(
        &state.db.pool,
        &members,
        message,
        &format!("/postings/{}", posting.id),
    )
    .await?;
    Ok(())
}

/// `POST /postings/{id}/open`: an approved posting starts taking applications.
pub async fn open(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let (posting, _) = own_posting(&state, &user, &id).await?;
    ensure_connected(&state, &posting).await?;
    if posting.apply_by.is_some_and(|d| d < now()) {
        return Err(refused(
            "apply_by_passed",
            "The application deadline has passed: close this posting and post a new one with a later deadline.".into(),
        ));
    }
    move_posting(
        &state,
        &posting,
        &[PostingState::Approved],
        PostingState::Open,
        &user,
        "",
    )
    .await?;
    flash(&session, "posting_opened").await?;
    Ok(Redirect::to(&format!("/postings/{id}")))
}

/// `POST /postings/{id}/close`: the posting side or the university stops it.
pub async fn close(
    State(state): State<AppState>,
    session: Session,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let (posting, access) = visible(&state, &user, &id).await?;
    if !(access.posting_side || access.reviewer || access.is_admin) {
        return Err(AppError::Forbidden);
    }
    move_posting(
        &state,
        &posting,
        &[PostingState::Open, PostingState::Approved],
        PostingState::Closed,
        &user,
        "",
    )
    .await?;
    flash(&session, "posting_closed").await?;
    Ok(Redirect::to(&format!("/postings/{id}")))
}
