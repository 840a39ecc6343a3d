//! Joint projects after posting (산학 공동 프로젝트).
//!
//! - `/postings/{posting_id}/interest`: a student of the posting's university
//!   expresses interest, alone or as a team (a statement and chosen members,
//!   who confirm), and follows the team's standing.
//! - `/postings/{posting_id}/teams`: the company (its members and the
//!   mentor), the university's faculty and site admins see every team;
//!   faculty endorse, and the company and a faculty advisor each approve.
//! - `/teams/{team_id}/…`: the moves of a team's state machine.
//! - `/projects/{team_id}`: the project space of a formed team: milestones,
//!   a message thread and files, for the team, the mentor and the company,
//!   the advisor, and (to look, not to take part) site admins.
//!
//! Who may do what is decided once, by the [`OnPosting`] and [`OnTeam`]
//! extractors and their policies; handlers only do the work.

use std::collections::HashMap;
use std::marker::PhantomData;

use askama::Template;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{FromRequestParts, Multipart, Path, State};
use axum::http::request::Parts;

use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::markdown;
use super::templates::{flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::CurrentUser;
use crate::db::postings::{self, Posting};
use crate::db::projects::{
    self as db_projects, Endorsement, Message, Milestone, MilestoneStatus, NewTeam, ProjectError,
    ProjectFile, Team, TeamAction, TeamEvent, TeamMember, TeamState,
};
use crate::db::users::User;
use crate::db::{orgs, users};
use crate::domain::{Email, MessageKey, PostingKind, PostingState, UserKind};
use crate::error::{AppError, AppResult};
use crate::files::{self, FileType, MAX_PROJECT_FILE_BYTES};
use crate::state::AppState;

/// The kinds of file a project space takes.
pub const PROJECT_FILE_TYPES: &[FileType] = &[
    FileType::Pdf,
    FileType::Png,
    FileType::Jpeg,
    FileType::Zip,
    FileType::Text,
];

const NAME_MAX: usize = 100;
const STATEMENT_MAX: usize = 5_000;
const NOTE_MAX: usize = 2_000;
const MESSAGE_MAX: usize = 20_000;
const MILESTONE_TITLE_MAX: usize = 200;

// ---------------------------------------------------------------------------
// Who the caller is

/// The caller's relation to a project posting and, on team routes, to one
/// team of it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Standing {
    pub admin: bool,
    /// A member of the posting's company, or the posting's mentor.
    pub company: bool,
    /// Faculty of the posting's university (a member of it, or an instructor
    /// of one of its courses).
    pub faculty: bool,
    /// A student of the posting's university.
    pub student: bool,
    /// Leads the team.
    pub lead: bool,
    /// Was chosen for the team by its lead (whatever the answer).
    pub chosen: bool,
    /// An accepted member still on the team.
    pub member: bool,
    /// The team's faculty advisor.
    pub advisor: bool,
}

impl Standing {
    /// Takes part in a formed team's space.
    pub fn participant(&self) -> bool {
        self.member || self.advisor || self.company
    }
}

async fn standing(state: &AppState, user: &User, posting: &Posting) -> AppResult<Standing> {
    let company = posting.mentor_id.as_deref() == Some(user.id.as_str())
        || orgs::role_of(&state.db, &posting.org_id, &user.id)
            .await?
            .is_some();
    let faculty = db_projects::is_faculty(&state.db, &user.id, &posting.university_id).await?;
    let student = user.kind == UserKind::Student
        && db_projects::is_student_of(&state.db, &user.id, &posting.university_id).await?;
    Ok(Standing {
        admin: user.is_admin(),
        company,
        faculty,
        student,
        ..Standing::default()
    })
}

async fn path_param(parts: &mut Parts, state: &AppState, name: &str) -> AppResult<String> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map_err(|_| AppError::NotFound)?;
    params.get(name).cloned().ok_or(AppError::NotFound)
}

/// Which callers a posting route admits.
pub trait PostingPolicy {
    fn admits(s: &Standing) -> bool;
    /// Whether the posting must be visible to students (open, or closed or
    /// expired after being open).
    const PUBLISHED_ONLY: bool;
}

/// Students of the posting's university.
pub struct StudentOfUniversity;
/// The company, the university's faculty and site admins.
pub struct Reviewer;

impl PostingPolicy for StudentOfUniversity {
    fn admits(s: &Standing) -> bool {
        s.student
    }
    const PUBLISHED_ONLY: bool = true;
}
impl PostingPolicy for Reviewer {
    fn admits(s: &Standing) -> bool {
        s.admin || s.company || s.faculty
    }
    const PUBLISHED_ONLY: bool = false;
}

/// The joint-project posting named by `{posting_id}`, with a caller the
/// policy admits.
pub struct OnPosting<P> {
    pub user: User,
    pub posting: Posting,
    pub standing: Standing,
    _policy: PhantomData<P>,
}

impl<P: PostingPolicy + Send + Sync> FromRequestParts<AppState> for OnPosting<P> {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        let id = path_param(parts, state, "posting_id").await?;
        let posting = postings::get(&state.db, &id)
            .await?
            .filter(|p| p.kind == PostingKind::Project)
            .ok_or(AppError::NotFound)?;
        let published = matches!(
            posting.state,
            PostingState::Open | PostingState::Closed | PostingState::Expired
        );
        if P::PUBLISHED_ONLY && !published {
            return Err(AppError::NotFound);
        }
        let standing = standing(state, &user, &posting).await?;
        if !P::admits(&standing) {
            return Err(AppError::Forbidden);
        }
        Ok(OnPosting {
            user,
            posting,
            standing,
            _policy: PhantomData,
        })
    }
}

/// Which callers a team route admits.
pub trait TeamPolicy {
    fn admits(s: &Standing) -> bool;
    /// The route belongs to the project space, which exists once formed.
    const SPACE: bool;
}

/// The team's lead.
pub struct Lead;
/// A member the lead chose (the answer is checked by the move itself, so
/// answering twice says why it cannot).
pub struct Invitee;
/// Faculty of the posting's university.
pub struct Faculty;
/// The company (its members and the mentor).
pub struct Company;
/// The company or the faculty.
pub struct Decider;
/// Anyone who may look at the project space (participants and site admins).
pub struct SpaceViewer;
/// The team, the advisor and the company: those who take part.
pub struct Participant;

impl TeamPolicy for Lead {
    fn admits(s: &Standing) -> bool {
        s.lead
    }
    const SPACE: bool = false;
}
impl TeamPolicy for Invitee {
    fn admits(s: &Standing) -> bool {
        s.chosen
    }
    const SPACE: bool = false;
}
impl TeamPolicy for Faculty {
    fn admits(s: &Standing) -> bool {
        s.faculty
    }
    const SPACE: bool = false;
}
impl TeamPolicy for Company {
    fn admits(s: &Standing) -> bool {
        s.company
    }
    const SPACE: bool = false;
}
impl TeamPolicy for Decider {
    fn admits(s: &Standing) -> bool {
        s.company || s.faculty
    }
    const SPACE: bool = false;
}
impl TeamPolicy for SpaceViewer {
    fn admits(s: &Standing) -> bool {
        s.participant() || s.admin
    }
    const SPACE: bool = true;
}
impl TeamPolicy for Participant {
    fn admits(s: &Standing) -> bool {
        s.participant()
    }
    const SPACE: bool = true;
}

/// The team named by `{team_id}`, its posting, and a caller the policy
/// admits. Space routes of a team that is not formed are not found.
pub struct OnTeam<P> {
    pub user: User,
    pub team: Team,
    pub posting: Posting,
    pub standing: Standing,
    _policy: PhantomData<P>,
}

impl<P: TeamPolicy + Send + Sync> FromRequestParts<AppState> for OnTeam<P> {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        let id = path_param(parts, state, "team_id").await?;
        let team = db_projects::get(&state.db, &id)
            .await?
            .ok_or(AppError::NotFound)?;
        if P::SPACE && team.state != TeamState::Formed {
            return Err(AppError::NotFound);
        }
        let posting = postings::get(&state.db, &team.posting_id)
            .await?
            .ok_or(AppError::NotFound)?;
        let mut standing = standing(state, &user, &posting).await?;
        if let Some(m) = db_projects::membership(&state.db, &team.id, &user.id).await? {
            let live = !matches!(team.state, TeamState::Withdrawn | TeamState::Declined);
            standing.lead = m.is_lead();
            standing.chosen = !m.is_lead();
            standing.member = m.status == db_projects::MemberStatus::Accepted && live;
        }
        standing.advisor = team.advisor_id.as_deref() == Some(user.id.as_str());
        if !P::admits(&standing) {
            return Err(AppError::Forbidden);
        }
        Ok(OnTeam {
            user,
            team,
            posting,
            standing,
            _policy: PhantomData,
        })
    }
}

/// A refused move becomes a 409 whose page says why; the rest is internal.
fn refused(e: ProjectError) -> AppError {
    match e {
        ProjectError::Refused(key) | ProjectError::Member { key, .. } => AppError::Conflict(key),
        ProjectError::Db(e) => e.into(),
        ProjectError::Internal(e) => AppError::Internal(e),
    }
}

// ---------------------------------------------------------------------------
// Views shared by the pages

/// The posting as a project page shows it.
pub struct PostingView {
    pub posting: Posting,
    pub body_html: String,
}

impl PostingView {
    fn of(posting: Posting) -> Self {
        let body_html = markdown::render(&posting.body);
        PostingView { posting, body_html }
    }
    pub fn nda(&self) -> bool {
        self.posting.nda_required != 0
    }
    pub fn limit(&self) -> usize {
        db_projects::team_limit(self.posting.team_size)
    }
}

/// A team with its members and endorsements, as the pages list it.
pub struct TeamView {
    pub team: Team,
    pub statement_html: String,
    pub members: Vec<TeamMember>,
    pub endorsements: Vec<Endorsement>,
    /// The team's history, oldest first.
    pub events: Vec<TeamEvent>,
}

impl TeamView {
    /// Why the team was declined, when the decider said.
    pub fn decline_reason(&self) -> Option<&str> {
        self.events
            .iter()
            .rev()
            .find(|e| e.to_state == TeamState::Declined)
            .map(|e| e.comment.as_str())
            .filter(|c| !c.is_empty())
    }
    pub fn pending_members(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.status == db_projects::MemberStatus::Invited)
            .count()
    }
    pub fn endorsed_by(&self, user_id: &str) -> bool {
        self.endorsements.iter().any(|e| e.user_id == user_id)
    }
    pub fn member(&self, user_id: &str) -> Option<&TeamMember> {
        self.members.iter().find(|m| m.user_id == user_id)
    }
    pub fn can_endorse(&self) -> bool {
        self.team.state.after(TeamAction::Endorse).is_ok()
    }
    pub fn can_approve_company(&self) -> bool {
        self.team.state.after(TeamAction::ApproveCompany).is_ok()
    }
    pub fn can_approve_advisor(&self) -> bool {
        self.team.state.after(TeamAction::ApproveAdvisor).is_ok()
    }
    pub fn is_pending(&self) -> bool {
        self.team.state.is_pending()
    }
    pub fn is_formed(&self) -> bool {
        self.team.state == TeamState::Formed
    }
}

fn team_views(
    teams: Vec<Team>,
    members: Vec<TeamMember>,
    endorsements: Vec<Endorsement>,
    events: Vec<TeamEvent>,
) -> Vec<TeamView> {
    let mut history: HashMap<String, Vec<TeamEvent>> = HashMap::new();
    for e in events {
        history.entry(e.team_id.clone()).or_default().push(e);
    }
    let mut by_team: HashMap<String, Vec<TeamMember>> = HashMap::new();
    for m in members {
        by_team.entry(m.team_id.clone()).or_default().push(m);
    }
    let mut endorsed: HashMap<String, Vec<Endorsement>> = HashMap::new();
    for e in endorsements {
        endorsed.entry(e.team_id.clone()).or_default().push(e);
    }
    teams
        .into_iter()
        .map(|team| TeamView {
            statement_html: markdown::render(&team.statement),
            members: by_team.remove(&team.id).unwrap_or_default(),
            endorsements: endorsed.remove(&team.id).unwrap_or_default(),
            events: history.remove(&team.id).unwrap_or_default(),
            team,
        })
        .collect()
}

/// Required text of at most `max` characters, without control characters
/// other than line breaks and tabs.
fn required_text(raw: &str, max: usize, missing: MessageKey) -> Result<String, MessageKey> {
    let s = optional_text(raw, max)?;
    if s.is_empty() {
        Err(missing)
    } else {
        Ok(s)
    }
}

fn optional_text(raw: &str, max: usize) -> Result<String, MessageKey> {
    let s = raw.trim();
    if s.chars().count() > max {
        Err("project_text_too_long")
    } else if s
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        Err("text_invalid")
    } else {
        Ok(s.to_owned())
    }
}

fn checked(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------
// Expressing interest (students)

#[derive(Default, Deserialize)]
pub struct InterestForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub statement: String,
    /// Chosen members' emails, separated by commas, spaces or lines.
    #[serde(default)]
    pub members: String,
    #[serde(default)]
    pub nda_ack: Option<String>,
}

#[derive(Template)]
#[template(path = "projects/interest.html")]
pub struct InterestPage {
    pub ctx: PageCtx,
    pub view: PostingView,
    pub teams: Vec<TeamView>,
    pub user_id: String,
    pub can_apply: bool,
    pub form: InterestForm,
    pub errors: FormErrors,
    /// A chosen member who cannot join: (their email, why).
    pub member_error: Option<(String, MessageKey)>,
    /// Why the whole expression of interest was refused.
    pub form_error: Option<MessageKey>,
}

async fn interest_page(
    state: &AppState,
    ctx: PageCtx,
    access: OnPosting<StudentOfUniversity>,
    form: InterestForm,
    errors: FormErrors,
    member_error: Option<(String, MessageKey)>,
    form_error: Option<MessageKey>,
) -> AppResult<InterestPage> {
    let posting_id = access.posting.id.clone();
    let user_id = access.user.id.clone();
    let teams = db_projects::of_posting_for(&state.db, &posting_id, &user_id).await?;
    let members = db_projects::members_of_posting(&state.db, &posting_id).await?;
    let endorsements = db_projects::endorsements_of_posting(&state.db, &posting_id).await?;
    let events = db_projects::events_of_posting(&state.db, &posting_id).await?;
    let teams = team_views(teams, members, endorsements, events);
    let on_live_team = teams.iter().any(|t| {
        !matches!(t.team.state, TeamState::Withdrawn | TeamState::Declined)
            && t.member(&user_id)
                .is_some_and(|m| m.status != db_projects::MemberStatus::Declined)
    });
    let can_apply = access.posting.accepts_applications(crate::db::now()) && !on_live_team;
    Ok(InterestPage {
        ctx,
        view: PostingView::of(access.posting),
        teams,
        user_id,
        can_apply,
        form,
        errors,
        member_error,
        form_error,
    })
}

/// `GET /postings/{posting_id}/interest`: the form, and the caller's teams.
pub async fn interest(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: OnPosting<StudentOfUniversity>,
) -> AppResult<Response> {
    let page = interest_page(
        &state,
        ctx,
        access,
        InterestForm::default(),
        FormErrors::default(),
        None,
        None,
    )
    .await?;
    Ok(render(&page))
}

/// `POST /postings/{posting_id}/interest`: the lead sends the team's interest.
pub async fn express_interest(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: OnPosting<StudentOfUniversity>,
    Form(form): Form<InterestForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let name = errors.check(
        "name",
        required_text(&form.name, NAME_MAX, "team_name_required"),
    );
    let statement = errors.check(
        "statement",
        required_text(&form.statement, STATEMENT_MAX, "statement_required"),
    );
    let nda_ack = checked(&form.nda_ack);
    if access.posting.nda_required != 0 && !nda_ack {
        errors.add("nda_ack", "nda_ack_required");
    }
    let mut member_error = None;
    let mut member_ids: Vec<String> = Vec::new();
    let mut emails: Vec<(String, String)> = Vec::new();
    for raw in form
        .members
        .split([',', ';', '\n', '\r', ' ', '\t'])
        .filter(|s| !s.trim().is_empty())
    {
        let email = match Email::parse(raw) {
            Ok(e) => e,
            Err(key) => {
                member_error = Some((raw.trim().to_owned(), key));
                break;
            }
        };
        match users::by_email(&state.db, email.as_str()).await? {
            Some(u) => {
                if !member_ids.contains(&u.id) {
                    emails.push((u.id.clone(), email.as_str().to_owned()));
                    member_ids.push(u.id);
                }
            }
            None => {
                member_error = Some((email.as_str().to_owned(), "team_member_unknown"));
                break;
            }
        }
    }
    if member_error.is_some() {
        errors.add("members", "team_members_invalid");
    }
    let (Some(name), Some(statement)) = (name, statement) else {
        let page = interest_page(&state, ctx, access, form, errors, member_error, None).await?;
        return Ok(with_errors(&page));
    };
    if !errors.is_empty() {
        let page = interest_page(&state, ctx, access, form, errors, member_error, None).await?;
        return Ok(with_errors(&page));
    }
    let posting_id = access.posting.id.clone();
    let result = db_projects::express_interest(
        &state.db,
        &NewTeam {
            posting_id: &posting_id,
            lead_id: &access.user.id,
            name: &name,
            statement: &statement,
            member_ids: &member_ids,
            nda_ack,
        },
    )
    .await;
    match result {
        Ok(_) => {
            flash(&session, "interest_sent").await?;
            Ok(Redirect::to(&format!("/postings/{posting_id}/interest")).into_response())
        }
        Err(ProjectError::Member { user_id, key }) => {
            let email = emails
                .iter()
                .find(|(id, _)| *id == user_id)
                .map(|(_, e)| e.clone())
                .unwrap_or_default();
            errors.add("members", "team_members_invalid");
            let page =
                interest_page(&state, ctx, access, form, errors, Some((email, key)), None).await?;
            Ok(with_errors(&page))
        }
        Err(ProjectError::Refused(key)) => {
            let page = interest_page(&state, ctx, access, form, errors, None, Some(key)).await?;
            Ok(with_errors(&page))
        }
        Err(e) => Err(refused(e)),
    }
}

// ---------------------------------------------------------------------------
// The teams of a posting (company, faculty, admins)

#[derive(Template)]
#[template(path = "projects/teams.html")]
pub struct TeamsPage {
    pub ctx: PageCtx,
    pub view: PostingView,
    pub teams: Vec<TeamView>,
    pub user_id: String,
    pub standing: Standing,
}

/// `GET /postings/{posting_id}/teams`.
pub async fn teams(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: OnPosting<Reviewer>,
) -> AppResult<Response> {
    let posting_id = access.posting.id.clone();
    let teams = db_projects::of_posting(&state.db, &posting_id).await?;
    let members = db_projects::members_of_posting(&state.db, &posting_id).await?;
    let endorsements = db_projects::endorsements_of_posting(&state.db, &posting_id).await?;
    let events = db_projects::events_of_posting(&state.db, &posting_id).await?;
    Ok(render(&TeamsPage {
        ctx,
        view: PostingView::of(access.posting),
        teams: team_views(teams, members, endorsements, events),
        user_id: access.user.id,
        standing: access.standing,
    }))
}

// ---------------------------------------------------------------------------
// Moves of a team

#[derive(Default, Deserialize)]
pub struct AnswerForm {
    #[serde(default)]
    pub nda_ack: Option<String>,
}

fn to_interest(team: &Team) -> Redirect {
    Redirect::to(&format!("/postings/{}/interest", team.posting_id))
}

fn to_teams(team: &Team) -> Redirect {
    Redirect::to(&format!("/postings/{}/teams", team.posting_id))
}

/// `POST /teams/{team_id}/accept`: a chosen member joins.
pub async fn accept_invitation(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Invitee>,
    Form(form): Form<AnswerForm>,
) -> AppResult<Redirect> {
    db_projects::answer_invitation(
        &state.db,
        &access.team.id,
        &access.user.id,
        true,
        checked(&form.nda_ack),
    )
    .await
    .map_err(refused)?;
    flash(&session, "invitation_accepted").await?;
    Ok(to_interest(&access.team))
}

/// `POST /teams/{team_id}/decline-invitation`: a chosen member says no.
pub async fn decline_invitation(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Invitee>,
) -> AppResult<Redirect> {
    db_projects::answer_invitation(&state.db, &access.team.id, &access.user.id, false, false)
        .await
        .map_err(refused)?;
    flash(&session, "invitation_declined").await?;
    Ok(to_interest(&access.team))
}

/// `POST /teams/{team_id}/withdraw`: the lead takes the interest back.
pub async fn withdraw(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Lead>,
) -> AppResult<Redirect> {
    db_projects::withdraw(&state.db, &access.team.id, &access.user.id)
        .await
        .map_err(refused)?;
    flash(&session, "team_withdrawn_done").await?;
    Ok(to_interest(&access.team))
}

#[derive(Default, Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    pub note: String,
}

/// `POST /teams/{team_id}/endorse`: faculty vouch for the team.
pub async fn endorse(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Faculty>,
    Form(form): Form<NoteForm>,
) -> AppResult<Redirect> {
    let note = optional_text(&form.note, NOTE_MAX).map_err(AppError::BadRequest)?;
    db_projects::endorse(&state.db, &access.team.id, &access.user.id, &note)
        .await
        .map_err(refused)?;
    flash(&session, "team_endorsed").await?;
    Ok(to_teams(&access.team))
}

async fn approve(
    state: &AppState,
    session: &Session,
    team: &Team,
    action: TeamAction,
    by: &str,
) -> AppResult<Redirect> {
    let next = db_projects::approve(&state.db, &team.id, action, by)
        .await
        .map_err(refused)?;
    if next == TeamState::Formed {
        flash(session, "team_formed").await?;
    } else {
        flash(session, "team_approved").await?;
    }
    Ok(to_teams(team))
}

/// `POST /teams/{team_id}/approve-company`: the company approves the team.
pub async fn approve_company(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Company>,
) -> AppResult<Redirect> {
    approve(
        &state,
        &session,
        &access.team,
        TeamAction::ApproveCompany,
        &access.user.id,
    )
    .await
}

/// `POST /teams/{team_id}/approve-advisor`: a faculty member approves the
/// team and becomes its advisor.
pub async fn approve_advisor(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Faculty>,
) -> AppResult<Redirect> {
    approve(
        &state,
        &session,
        &access.team,
        TeamAction::ApproveAdvisor,
        &access.user.id,
    )
    .await
}

#[derive(Default, Deserialize)]
pub struct DeclineForm {
    #[serde(default)]
    pub reason: String,
}

/// `POST /teams/{team_id}/decline`: the company or the faculty turn the team down.
pub async fn decline(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Decider>,
    Form(form): Form<DeclineForm>,
) -> AppResult<Redirect> {
    let reason = optional_text(&form.reason, NOTE_MAX).map_err(AppError::BadRequest)?;
    db_projects::decline(&state.db, &access.team.id, &access.user.id, &reason)
        .await
        .map_err(refused)?;
    flash(&session, "team_declined_done").await?;
    Ok(to_teams(&access.team))
}

// ---------------------------------------------------------------------------
// The project space

pub struct MilestoneView {
    pub milestone: Milestone,
    pub late: bool,
}

pub struct MessageView {
    pub message: Message,
    pub html: String,
}

#[derive(Default)]
pub struct SpaceForms {
    pub message: String,
    pub milestone_title: String,
    pub milestone_due: String,
    pub milestone_description: String,
    pub errors: FormErrors,
}

#[derive(Template)]
#[template(path = "projects/space.html")]
pub struct SpacePage {
    pub ctx: PageCtx,
    pub view: PostingView,
    pub team: Team,
    pub members: Vec<TeamMember>,
    pub milestones: Vec<MilestoneView>,
    pub messages: Vec<MessageView>,
    pub files: Vec<ProjectFile>,
    pub can_take_part: bool,
    pub forms: SpaceForms,
    pub max_file_mb: usize,
    pub statuses: &'static [MilestoneStatus],
    /// The project's GPU budget (vouchers granted to this team's project):
    /// (left, used), as text; `None` when it has no voucher.
    pub budget: Option<(String, String)>,
    /// Live labs sponsored by the posting company: (lab id, title).
    pub company_labs: Vec<(String, String)>,
}

/// A file size for people (pages call it with a reference, as askama passes one).
pub fn size_label(bytes: &i64) -> String {
    let bytes = *bytes;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    } else if bytes >= 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

async fn space_page<P>(
    state: &AppState,
    ctx: PageCtx,
    access: OnTeam<P>,
    forms: SpaceForms,
) -> AppResult<SpacePage> {
    let team_id = access.team.id.clone();
    let members = db_projects::members(&state.db, &team_id)
        .await?
        .into_iter()
        .filter(|m| m.status == db_projects::MemberStatus::Accepted)
        .collect();
    let today = db_projects::today();
    let milestones = db_projects::milestones(&state.db, &team_id)
        .await?
        .into_iter()
        .map(|m| MilestoneView {
            late: m.is_late(&today),
            milestone: m,
        })
        .collect();
    let messages = db_projects::messages(&state.db, &team_id)
        .await?
        .into_iter()
        .map(|m| MessageView {
            html: markdown::render(&m.body),
            message: m,
        })
        .collect();
    let files = db_projects::files(&state.db, &team_id).await?;
    let vouchers =
        crate::db::vouchers::of_scope(&state.db, &crate::db::vouchers::Scope::project(&team_id))
            .await?;
    let budget = (!vouchers.is_empty()).then(|| {
        let left: i64 = vouchers.iter().map(|v| v.balance_ms).sum();
        let used: i64 = vouchers.iter().map(|v| v.charged_ms).sum();
        (super::vouchers::amount(left), super::vouchers::amount(used))
    });
    let mut company_labs: Vec<(String, String)> = crate::db::publish::live(&state.db)
        .await?
        .into_iter()
        .filter(|v| v.sponsor_org_id.as_deref() == Some(access.posting.org_id.as_str()))
        .map(|v| (v.lab_id, v.title))
        .collect();
    company_labs.dedup_by(|a, b| a.0 == b.0);
    Ok(SpacePage {
        ctx,
        can_take_part: access.standing.participant(),
        view: PostingView::of(access.posting),
        team: access.team,
        members,
        milestones,
        messages,
        files,
        forms,
        max_file_mb: MAX_PROJECT_FILE_BYTES / (1024 * 1024),
        statuses: MilestoneStatus::ALL,
        budget,
        company_labs,
    })
}

/// `GET /projects/{team_id}`.
pub async fn space(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: OnTeam<SpaceViewer>,
) -> AppResult<Response> {
    Ok(render(
        &space_page(&state, ctx, access, SpaceForms::default()).await?,
    ))
}

#[derive(Default, Deserialize)]
pub struct MessageForm {
    #[serde(default)]
    pub body: String,
}

/// `POST /projects/{team_id}/messages`.
pub async fn post_message(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: OnTeam<Participant>,
    Form(form): Form<MessageForm>,
) -> AppResult<Response> {
    let body = match required_text(&form.body, MESSAGE_MAX, "message_required") {
        Ok(b) => b,
        Err(key) => {
            let mut forms = SpaceForms {
                message: form.body,
                ..SpaceForms::default()
            };
            forms.errors.add("body", key);
            return Ok(with_errors(&space_page(&state, ctx, access, forms).await?));
        }
    };
    db_projects::post_message(&state.db, &access.team.id, &access.user.id, &body)
        .await
        .map_err(refused)?;
    flash(&session, "message_posted").await?;
    Ok(Redirect::to(&format!("/projects/{}#messages", access.team.id)).into_response())
}

#[derive(Default, Deserialize)]
pub struct MilestoneForm {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub due_on: String,
    #[serde(default)]
    pub description: String,
}

/// A due date as `YYYY-MM-DD`.
fn parse_due(raw: &str) -> Result<String, MessageKey> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("milestone_due_required");
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, format)
        .map(|d| d.to_string())
        .map_err(|_| "milestone_due_invalid")
}

/// `POST /projects/{team_id}/milestones`.
pub async fn add_milestone(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: OnTeam<Participant>,
    Form(form): Form<MilestoneForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let title = errors.check(
        "milestone_title",
        required_text(&form.title, MILESTONE_TITLE_MAX, "title_required"),
    );
    let due = errors.check("milestone_due", parse_due(&form.due_on));
    let description = errors.check(
        "milestone_description",
        optional_text(&form.description, NOTE_MAX),
    );
    let (Some(title), Some(due), Some(description)) = (title, due, description) else {
        let forms = SpaceForms {
            milestone_title: form.title,
            milestone_due: form.due_on,
            milestone_description: form.description,
            errors,
            ..SpaceForms::default()
        };
        return Ok(with_errors(&space_page(&state, ctx, access, forms).await?));
    };
    db_projects::add_milestone(
        &state.db,
        &access.team.id,
        &access.user.id,
        &title,
        &description,
        &due,
    )
    .await
    .map_err(refused)?;
    flash(&session, "milestone_added").await?;
    Ok(Redirect::to(&format!("/projects/{}#milestones", access.team.id)).into_response())
}

#[derive(Default, Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    pub status: String,
}

/// `POST /projects/{team_id}/milestones/{milestone_id}/status`.
pub async fn set_milestone_status(
    State(state): State<AppState>,
    session: Session,
    access: OnTeam<Participant>,
    Path((_, milestone_id)): Path<(String, String)>,
    Form(form): Form<StatusForm>,
) -> AppResult<Redirect> {
    let status = MilestoneStatus::parse(&form.status)
        .ok_or(AppError::BadRequest("milestone_status_invalid"))?;
    if !db_projects::set_milestone_status(&state.db, &access.team.id, &milestone_id, status)
        .await
        .map_err(refused)?
    {
        return Err(AppError::NotFound);
    }
    flash(&session, "milestone_updated").await?;
    Ok(Redirect::to(&format!(
        "/projects/{}#milestones",
        access.team.id
    )))
}

/// Reads the multipart field `file`: its name and at most one byte more
/// than the limit (enough for the size check to refuse it), draining the
/// rest so the client gets the answer.
async fn read_upload(multipart: &mut Multipart) -> AppResult<Option<(String, Vec<u8>)>> {
    let mut upload = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|_| AppError::BadRequest("upload_failed"))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_owned();
        let bytes = super::files::read_capped(field, MAX_PROJECT_FILE_BYTES)
            .await
            .map_err(AppError::BadRequest)?;
        upload = Some((name, bytes));
    }
    Ok(upload)
}

/// `POST /projects/{team_id}/files` (multipart field `file`): checked by
/// name, size and content before anything is written.
pub async fn upload_file(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: OnTeam<Participant>,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<Response> {
    let mut multipart = multipart.map_err(|_| AppError::BadRequest("not_multipart"))?;
    let checked = match read_upload(&mut multipart).await? {
        Some((name, bytes)) => {
            files::check(&name, bytes, PROJECT_FILE_TYPES, MAX_PROJECT_FILE_BYTES)
        }
        None => Err("file_empty"),
    };
    let upload = match checked {
        Ok(u) => u,
        Err(key) => {
            let mut forms = SpaceForms::default();
            forms.errors.add("file", key);
            return Ok(with_errors(&space_page(&state, ctx, access, forms).await?));
        }
    };
    let data_dir = state.config.data_dir.clone();
    db_projects::add_file(&state.db, &access.team.id, &access.user.id, &upload, || {
        files::store(&data_dir, &upload)
    })
    .await
    .map_err(refused)?;
    flash(&session, "file_uploaded").await?;
    Ok(Redirect::to(&format!("/projects/{}#files", access.team.id)).into_response())
}

/// `GET /projects/{team_id}/files/{file_id}`: always a download, with the
/// type the upload was checked as.
pub async fn download_file(
    State(state): State<AppState>,
    access: OnTeam<SpaceViewer>,
    Path((_, file_id)): Path<(String, String)>,
) -> AppResult<Response> {
    let f = db_projects::file(&state.db, &access.team.id, &file_id)
        .await?
        .ok_or(AppError::NotFound)?;
    super::files::download(&state, &f.name, &f.content_type, &f.sha256).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_dates() {
        assert_eq!(parse_due(" 2027-03-01 ").unwrap(), "2027-03-01");
        assert_eq!(parse_due("").unwrap_err(), "milestone_due_required");
        assert_eq!(
            parse_due("2027-02-30").unwrap_err(),
            "milestone_due_invalid"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size_label(&10), "10 B");
        assert_eq!(size_label(&2048), "2.0 KB");
        assert_eq!(size_label(&(3 * 1024 * 1024)), "3.0 MB");
    }
}
