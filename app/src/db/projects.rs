//! Joint projects after posting: teams that express interest in a project
//! posting, faculty endorsements, the company's and the faculty advisor's
//! approvals, and the project space of a formed team (milestones, messages,
//! files).
//!
//! A team's life is the state machine of [`TeamState::after`]. Every move is
//! made in one transaction: the state is read, the move is checked, and the
//! `UPDATE … WHERE state = <the state read>` plus its history row are
//! written together; the notifications it calls for go out once it has
//! committed. A move that is not allowed returns a
//! [`ProjectError::Refused`] with a message key and changes nothing.

use std::fmt;

use sqlx::{AnyConnection, FromRow};

use super::{is_unique_violation, new_id, notifications, now, Db};
use crate::domain::MessageKey;

/// Teams may not be larger than this when the posting sets no size.
pub const MAX_TEAM_SIZE: usize = 8;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Self::parse(&s).ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)).into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Where a team stands: interested → endorsed → company_approved |
    /// advisor_approved → formed; withdrawn or declined before it is formed.
    TeamState {
        Interested => "interested",
        Endorsed => "endorsed",
        CompanyApproved => "company_approved",
        AdvisorApproved => "advisor_approved",
        Formed => "formed",
        Withdrawn => "withdrawn",
        Declined => "declined",
    }
);
text_enum!(
    /// A chosen member's answer; the lead is `Accepted` from the start.
    MemberStatus { Invited => "invited", Accepted => "accepted", Declined => "declined" }
);
text_enum!(
    /// A milestone's status as people set it; "late" is derived from the
    /// due date (see [`Milestone::is_late`]).
    MilestoneStatus { Planned => "planned", InProgress => "in_progress", Done => "done" }
);

/// What someone does to a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeamAction {
    /// Faculty of the posting's university vouch for the team.
    Endorse,
    /// A member of the posting company approves the final team.
    ApproveCompany,
    /// A faculty member approves the team and becomes its advisor.
    ApproveAdvisor,
    /// The lead takes the expression of interest back.
    Withdraw,
    /// The company or the faculty turn the team down.
    Decline,
}

impl TeamState {
    /// The team is alive and not yet formed: it can still be endorsed,
    /// approved, withdrawn or declined, and its members can still answer.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            Self::Interested | Self::Endorsed | Self::CompanyApproved | Self::AdvisorApproved
        )
    }

    /// No further move is possible.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Formed | Self::Withdrawn | Self::Declined)
    }

    /// The state after `action`, or the message key saying why the action is
    /// not allowed from here.
    pub fn after(self, action: TeamAction) -> Result<TeamState, MessageKey> {
        use TeamAction::*;
        use TeamState::*;
        match (self, action) {
            (Formed, _) => Err("team_already_formed"),
            (Withdrawn, _) => Err("team_withdrawn"),
            (Declined, _) => Err("team_declined"),
            (Interested | Endorsed, Endorse) => Ok(Endorsed),
            (CompanyApproved | AdvisorApproved, Endorse) => Err("team_endorsement_closed"),
            (Interested | Endorsed, ApproveCompany) => Ok(CompanyApproved),
            (AdvisorApproved, ApproveCompany) => Ok(Formed),
            (CompanyApproved, ApproveCompany) => Err("team_company_already_approved"),
            (Interested | Endorsed, ApproveAdvisor) => Ok(AdvisorApproved),
            (CompanyApproved, ApproveAdvisor) => Ok(Formed),
            (AdvisorApproved, ApproveAdvisor) => Err("team_advisor_already_approved"),
            (Interested | Endorsed | CompanyApproved | AdvisorApproved, Withdraw) => Ok(Withdrawn),
            (Interested | Endorsed | CompanyApproved | AdvisorApproved, Decline) => Ok(Declined),
        }
    }
}

/// Why a change to a team or its space did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// Not allowed now; the key names the reason for the person.
    #[error("refused: {0}")]
    Refused(MessageKey),
    /// One chosen member cannot join (unknown, not a student of the
    /// university, already on a team of this posting).
    #[error("member {user_id} refused: {key}")]
    Member { user_id: String, key: MessageKey },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

type Result<T, E = ProjectError> = std::result::Result<T, E>;

#[derive(Clone, Debug, FromRow)]
pub struct Team {
    pub id: String,
    pub posting_id: String,
    pub posting_title: String,
    pub name: String,
    pub lead_id: String,
    pub lead_name: String,
    pub statement: String,
    pub state: TeamState,
    pub company_approved_by: Option<String>,
    pub company_approver_name: Option<String>,
    pub company_approved_at: Option<i64>,
    pub advisor_id: Option<String>,
    pub advisor_name: Option<String>,
    pub advisor_approved_at: Option<i64>,
    pub formed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const TEAM_SELECT: &str = "SELECT t.id, t.posting_id, p.title AS posting_title, t.name, t.lead_id, \
     lu.display_name AS lead_name, t.statement, t.state, t.company_approved_by, \
     cu.display_name AS company_approver_name, t.company_approved_at, t.advisor_id, \
     au.display_name AS advisor_name, t.advisor_approved_at, t.formed_at, t.created_at, t.updated_at \
     FROM project_teams t JOIN postings p ON p.id = t.posting_id \
     JOIN users lu ON lu.id = t.lead_id \
     LEFT JOIN users cu ON cu.id = t.company_approved_by \
     LEFT JOIN users au ON au.id = t.advisor_id";

#[derive(Clone, Debug, FromRow)]
pub struct TeamMember {
    pub team_id: String,
    pub user_id: String,
    pub display_name: String,
    pub email: String,
    pub role: String,
    pub status: MemberStatus,
    pub nda_ack_at: Option<i64>,
}

impl TeamMember {
    pub fn is_lead(&self) -> bool {
        self.role == "lead"
    }
}

const MEMBER_SELECT: &str =
    "SELECT m.team_id, m.user_id, u.display_name, u.email, m.role, m.status, \
     m.nda_ack_at FROM project_team_members m JOIN users u ON u.id = m.user_id";

#[derive(Clone, Debug, FromRow)]
pub struct Endorsement {
    pub team_id: String,
    pub user_id: String,
    pub display_name: String,
    pub note: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, FromRow)]
pub struct TeamEvent {
    pub team_id: String,
    pub from_state: Option<TeamState>,
    pub to_state: TeamState,
    pub by_name: Option<String>,
    pub comment: String,
    pub at: i64,
}

#[derive(Clone, Debug, FromRow)]
pub struct Milestone {
    pub id: String,
    pub title: String,
    pub description: String,
    pub due_on: String,
    pub status: MilestoneStatus,
    pub created_by_name: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub done_at: Option<i64>,
}

impl Milestone {
    /// Not done, and its due date (`YYYY-MM-DD`) is before `today`.
    pub fn is_late(&self, today: &str) -> bool {
        self.status != MilestoneStatus::Done && self.due_on.as_str() < today
    }
}

#[derive(Clone, Debug, FromRow)]
pub struct Message {
    pub id: String,
    pub author_id: Option<String>,
    pub author_name: Option<String>,
    pub body: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, FromRow)]
pub struct ProjectFile {
    pub id: String,
    pub file_id: String,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub uploader_name: Option<String>,
    pub created_at: i64,
}

/// Today's date in UTC as `YYYY-MM-DD`, the form milestones' due dates use.
pub fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

// ---------------------------------------------------------------------------
// Who is who

/// A student of the university: a student account enrolled in one of its
/// courses or a member of it.
#[tracing::instrument(skip_all)]
pub async fn is_student_of(db: &Db, user_id: &str, university_id: &str) -> sqlx::Result<bool> {
    let mut conn = db.pool.acquire().await?;
    student_of(&mut conn, user_id, university_id).await
}

async fn student_of(
    conn: &mut AnyConnection,
    user_id: &str,
    university_id: &str,
) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users u WHERE u.id = $1 AND u.kind = 'student' AND u.disabled = 0 AND (\
         EXISTS (SELECT 1 FROM enrollments e JOIN courses c ON c.id = e.course_id \
                 WHERE e.user_id = u.id AND c.university_id = $2) \
         OR EXISTS (SELECT 1 FROM org_members m WHERE m.user_id = u.id AND m.org_id = $2))",
    )
    .bind(user_id)
    .bind(university_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Faculty of the university: a member of the university's organisation, or
/// an instructor of one of its courses.
#[tracing::instrument(skip_all)]
pub async fn is_faculty(db: &Db, user_id: &str, university_id: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users u WHERE u.id = $1 AND u.disabled = 0 AND (\
         EXISTS (SELECT 1 FROM org_members m WHERE m.user_id = u.id AND m.org_id = $2) \
         OR EXISTS (SELECT 1 FROM enrollments e JOIN courses c ON c.id = e.course_id \
                    WHERE e.user_id = u.id AND e.role = 'instructor' AND c.university_id = $2))",
    )
    .bind(user_id)
    .bind(university_id)
    .fetch_one(&db.pool)
    .await?;
    Ok(n > 0)
}

/// The caller's membership of a team (any status), if any.
#[tracing::instrument(skip_all)]
pub async fn membership(db: &Db, team_id: &str, user_id: &str) -> sqlx::Result<Option<TeamMember>> {
    sqlx::query_as(&format!(
        "{MEMBER_SELECT} WHERE m.team_id = $1 AND m.user_id = $2"
    ))
    .bind(team_id)
    .bind(user_id)
    .fetch_optional(&db.pool)
    .await
}

// ---------------------------------------------------------------------------
// Reading teams

#[tracing::instrument(skip_all)]
pub async fn get(db: &Db, team_id: &str) -> sqlx::Result<Option<Team>> {
    sqlx::query_as(&format!("{TEAM_SELECT} WHERE t.id = $1"))
        .bind(team_id)
        .fetch_optional(&db.pool)
        .await
}

/// Every team of a posting, oldest first.
#[tracing::instrument(skip_all)]
pub async fn of_posting(db: &Db, posting_id: &str) -> sqlx::Result<Vec<Team>> {
    sqlx::query_as(&format!(
        "{TEAM_SELECT} WHERE t.posting_id = $1 ORDER BY t.created_at, t.id"
    ))
    .bind(posting_id)
    .fetch_all(&db.pool)
    .await
}

/// The teams of a posting that a user leads or was chosen for (any status).
#[tracing::instrument(skip_all)]
pub async fn of_posting_for(db: &Db, posting_id: &str, user_id: &str) -> sqlx::Result<Vec<Team>> {
    sqlx::query_as(&format!(
        "{TEAM_SELECT} WHERE t.posting_id = $1 AND t.id IN \
         (SELECT team_id FROM project_team_members WHERE user_id = $2) \
         ORDER BY t.created_at DESC, t.id"
    ))
    .bind(posting_id)
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}

/// Formed teams a user is part of (as a member or as the advisor), newest first.
#[tracing::instrument(skip_all)]
pub async fn formed_of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<Team>> {
    sqlx::query_as(&format!(
        "{TEAM_SELECT} WHERE t.state = 'formed' AND (t.advisor_id = $1 OR t.id IN \
         (SELECT team_id FROM project_team_members WHERE user_id = $1 AND status = 'accepted')) \
         ORDER BY t.formed_at DESC, t.id"
    ))
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn members(db: &Db, team_id: &str) -> sqlx::Result<Vec<TeamMember>> {
    sqlx::query_as(&format!(
        "{MEMBER_SELECT} WHERE m.team_id = $1 ORDER BY m.role DESC, u.display_name"
    ))
    .bind(team_id)
    .fetch_all(&db.pool)
    .await
}

/// The members of every team of a posting (group them by `team_id`).
#[tracing::instrument(skip_all)]
pub async fn members_of_posting(db: &Db, posting_id: &str) -> sqlx::Result<Vec<TeamMember>> {
    sqlx::query_as(&format!(
        "{MEMBER_SELECT} WHERE m.posting_id = $1 ORDER BY m.role DESC, u.display_name"
    ))
    .bind(posting_id)
    .fetch_all(&db.pool)
    .await
}

/// The endorsements of every team of a posting.
#[tracing::instrument(skip_all)]
pub async fn endorsements_of_posting(db: &Db, posting_id: &str) -> sqlx::Result<Vec<Endorsement>> {
    sqlx::query_as(
        "SELECT e.team_id, e.user_id, u.display_name, e.note, e.created_at \
         FROM project_endorsements e JOIN users u ON u.id = e.user_id \
         JOIN project_teams t ON t.id = e.team_id WHERE t.posting_id = $1 ORDER BY e.created_at",
    )
    .bind(posting_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn endorsements(db: &Db, team_id: &str) -> sqlx::Result<Vec<Endorsement>> {
    sqlx::query_as(
        "SELECT e.team_id, e.user_id, u.display_name, e.note, e.created_at \
         FROM project_endorsements e JOIN users u ON u.id = e.user_id \
         WHERE e.team_id = $1 ORDER BY e.created_at",
    )
    .bind(team_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn events(db: &Db, team_id: &str) -> sqlx::Result<Vec<TeamEvent>> {
    sqlx::query_as(
        "SELECT e.team_id, e.from_state, e.to_state, u.display_name AS by_name, e.comment, e.at \
         FROM project_team_events e LEFT JOIN users u ON u.id = e.by_user \
         WHERE e.team_id = $1 ORDER BY e.at, e.id",
    )
    .bind(team_id)
    .fetch_all(&db.pool)
    .await
}

/// The history of every team of a posting (group it by `team_id`).
#[tracing::instrument(skip_all)]
pub async fn events_of_posting(db: &Db, posting_id: &str) -> sqlx::Result<Vec<TeamEvent>> {
    sqlx::query_as(
        "SELECT e.team_id, e.from_state, e.to_state, u.display_name AS by_name, e.comment, e.at \
         FROM project_team_events e JOIN project_teams t ON t.id = e.team_id \
         LEFT JOIN users u ON u.id = e.by_user WHERE t.posting_id = $1 ORDER BY e.at, e.id",
    )
    .bind(posting_id)
    .fetch_all(&db.pool)
    .await
}

// ---------------------------------------------------------------------------
// Expressing interest

/// A team's expression of interest, as the lead sends it.
pub struct NewTeam<'a> {
    pub posting_id: &'a str,
    pub lead_id: &'a str,
    pub name: &'a str,
    pub statement: &'a str,
    /// The chosen members (not the lead); each must confirm.
    pub member_ids: &'a [String],
    /// The lead acknowledged the posting's NDA notice.
    pub nda_ack: bool,
}

#[derive(FromRow)]
struct PostingFacts {
    kind: String,
    state: String,
    apply_by: Option<i64>,
    team_size: Option<i64>,
    nda_required: i64,
    university_id: String,
    org_id: String,
    mentor_id: Option<String>,
    title: String,
}

async fn posting_facts(conn: &mut AnyConnection, posting_id: &str) -> Result<PostingFacts> {
    sqlx::query_as(
        "SELECT kind, state, apply_by, team_size, nda_required, university_id, org_id, mentor_id, \
         title FROM postings WHERE id = $1",
    )
    .bind(posting_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ProjectError::Refused("posting_not_project"))
}

/// The largest team the posting allows (lead included).
pub fn team_limit(team_size: Option<i64>) -> usize {
    team_size
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(MAX_TEAM_SIZE)
}

/// Records a team's interest in an open project posting: the lead is on the
/// team at once, each chosen member is invited and confirms later. The
/// company (its members and the mentor), the university's admins and the
/// invited members are notified. Returns the team's id.
#[tracing::instrument(skip_all)]
pub async fn express_interest(db: &Db, new: &NewTeam<'_>) -> Result<String> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    let facts = posting_facts(&mut tx, new.posting_id).await?;
    if facts.kind != "project" {
        return Err(ProjectError::Refused("posting_not_project"));
    }
    let at = now();
    if facts.state != "open" || facts.apply_by.is_some_and(|d| at > d) {
        return Err(ProjectError::Refused("posting_not_accepting"));
    }
    if facts.nda_required != 0 && !new.nda_ack {
        return Err(ProjectError::Refused("nda_ack_required"));
    }
    let mut chosen: Vec<&String> = Vec::new();
    for id in new.member_ids {
        if id != new.lead_id && !chosen.contains(&id) {
            chosen.push(id);
        }
    }
    if chosen.len() + 1 > team_limit(facts.team_size) {
        return Err(ProjectError::Refused("team_too_large"));
    }
    if !student_of(&mut tx, new.lead_id, &facts.university_id).await? {
        return Err(ProjectError::Refused("not_a_student_of_university"));
    }
    for id in &chosen {
        if !student_of(&mut tx, id, &facts.university_id).await? {
            return Err(ProjectError::Member {
                user_id: (*id).clone(),
                key: "team_member_not_student",
            });
        }
    }
    let team_id = new_id();
    sqlx::query(
        "INSERT INTO project_teams (id, posting_id, name, lead_id, statement, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'interested', $6, $6)",
    )
    .bind(&team_id)
    .bind(new.posting_id)
    .bind(new.name)
    .bind(new.lead_id)
    .bind(new.statement)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let nda_at = (facts.nda_required != 0).then_some(at);
    match insert_member(
        &mut tx,
        &team_id,
        new.posting_id,
        new.lead_id,
        "lead",
        MemberStatus::Accepted,
        nda_at,
    )
    .await
    {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ProjectError::Refused("already_on_a_team"))
        }
        Err(e) => return Err(e.into()),
    }
    for id in &chosen {
        match insert_member(
            &mut tx,
            &team_id,
            new.posting_id,
            id,
            "member",
            MemberStatus::Invited,
            None,
        )
        .await
        {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(ProjectError::Member {
                    user_id: (*id).clone(),
                    key: "team_member_taken",
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    record_event(
        &mut tx,
        &team_id,
        None,
        TeamState::Interested,
        new.lead_id,
        "",
    )
    .await?;

    let mut company = org_member_ids(&mut tx, &facts.org_id).await?;
    company.extend(facts.mentor_id.clone());
    company.extend(org_admin_ids(&mut tx, &facts.university_id).await?);
    outbox.push(
        &company,
        &format!(
            "Team “{}” expressed interest in “{}”.",
            new.name, facts.title
        ),
        &format!("/postings/{}/teams", new.posting_id),
    );
    let invited: Vec<String> = chosen.iter().map(|s| (*s).clone()).collect();
    outbox.push(
        &invited,
        &format!(
            "You were chosen for team “{}” on “{}”: please confirm.",
            new.name, facts.title
        ),
        &format!("/postings/{}/interest", new.posting_id),
    );
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(team_id)
}

/// Notifications decided inside a transaction, sent once it committed
/// (through the pool: on SQLite a second writer would wait on the
/// transaction's own write lock).
#[derive(Default)]
struct Outbox(Vec<(Vec<String>, String, String)>);

impl Outbox {
    fn push(&mut self, user_ids: &[String], message: &str, link: &str) {
        self.0
            .push((user_ids.to_vec(), message.to_owned(), link.to_owned()));
    }

    async fn send(self, db: &Db) -> sqlx::Result<()> {
        for (to, message, link) in self.0 {
            notifications::notify(&db.pool, &to, &message, &link).await?;
        }
        Ok(())
    }
}

async fn insert_member(
    conn: &mut AnyConnection,
    team_id: &str,
    posting_id: &str,
    user_id: &str,
    role: &str,
    status: MemberStatus,
    nda_ack_at: Option<i64>,
) -> sqlx::Result<()> {
    let at = now();
    let answered = (status != MemberStatus::Invited).then_some(at);
    sqlx::query(
        "INSERT INTO project_team_members (team_id, posting_id, user_id, role, status, active, \
         nda_ack_at, invited_at, answered_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)",
    )
    .bind(team_id)
    .bind(posting_id)
    .bind(user_id)
    .bind(role)
    .bind(status.as_str())
    .bind(nda_ack_at)
    .bind(at)
    .bind(answered)
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn org_member_ids(conn: &mut AnyConnection, org_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT user_id FROM org_members WHERE org_id = $1")
        .bind(org_id)
        .fetch_all(&mut *conn)
        .await
}

async fn org_admin_ids(conn: &mut AnyConnection, org_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT user_id FROM org_members WHERE org_id = $1 AND role = 'admin'")
        .bind(org_id)
        .fetch_all(&mut *conn)
        .await
}

/// Accepted members still on the team.
async fn accepted_ids(conn: &mut AnyConnection, team_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM project_team_members WHERE team_id = $1 AND status = 'accepted' AND active = 1",
    )
    .bind(team_id)
    .fetch_all(&mut *conn)
    .await
}

/// Everyone in a team's project space who gets its notifications: the
/// accepted members, the advisor, the mentor and the company's members.
async fn participant_ids(conn: &mut AnyConnection, team_id: &str) -> sqlx::Result<Vec<String>> {
    let mut ids = accepted_ids(conn, team_id).await?;
    let (advisor, mentor, org_id): (Option<String>, Option<String>, String) = sqlx::query_as(
        "SELECT t.advisor_id, p.mentor_id, p.org_id FROM project_teams t \
         JOIN postings p ON p.id = t.posting_id WHERE t.id = $1",
    )
    .bind(team_id)
    .fetch_one(&mut *conn)
    .await?;
    ids.extend(advisor);
    ids.extend(mentor);
    ids.extend(org_member_ids(conn, &org_id).await?);
    Ok(ids)
}

async fn record_event(
    conn: &mut AnyConnection,
    team_id: &str,
    from: Option<TeamState>,
    to: TeamState,
    by: &str,
    comment: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO project_team_events (id, team_id, from_state, to_state, by_user, comment, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(team_id)
    .bind(from.map(TeamState::as_str))
    .bind(to.as_str())
    .bind(by)
    .bind(comment)
    .bind(now())
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Members answering

/// A chosen member accepts (acknowledging the NDA notice when the posting
/// has one) or declines. Only a pending team's invited members can answer;
/// a member who declines leaves the team, and the lead is told either way.
#[tracing::instrument(skip_all)]
pub async fn answer_invitation(
    db: &Db,
    team_id: &str,
    user_id: &str,
    accept: bool,
    nda_ack: bool,
) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    let (state, posting_id, lead_id, name): (TeamState, String, String, String) =
        sqlx::query_as("SELECT state, posting_id, lead_id, name FROM project_teams WHERE id = $1")
            .bind(team_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ProjectError::Refused("not_invited"))?;
    if !state.is_pending() {
        return Err(ProjectError::Refused("team_not_pending"));
    }
    let status: Option<MemberStatus> = sqlx::query_scalar(
        "SELECT status FROM project_team_members WHERE team_id = $1 AND user_id = $2",
    )
    .bind(team_id)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    match status {
        None => return Err(ProjectError::Refused("not_invited")),
        Some(MemberStatus::Invited) => {}
        Some(_) => return Err(ProjectError::Refused("invitation_answered")),
    }
    let facts = posting_facts(&mut tx, &posting_id).await?;
    let at = now();
    if accept {
        if facts.nda_required != 0 && !nda_ack {
            return Err(ProjectError::Refused("nda_ack_required"));
        }
        let nda_at = (facts.nda_required != 0).then_some(at);
        sqlx::query(
            "UPDATE project_team_members SET status = 'accepted', answered_at = $1, nda_ack_at = $2 \
             WHERE team_id = $3 AND user_id = $4 AND status = 'invited'",
        )
        .bind(at)
        .bind(nda_at)
        .bind(team_id)
        .bind(user_id)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "UPDATE project_team_members SET status = 'declined', active = 0, answered_at = $1 \
             WHERE team_id = $2 AND user_id = $3 AND status = 'invited'",
        )
        .bind(at)
        .bind(team_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    }
    let who: String = sqlx::query_scalar("SELECT display_name FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    let verb = if accept { "joined" } else { "declined to join" };
    outbox.push(
        &[lead_id],
        &format!("{who} {verb} team “{name}” on “{}”.", facts.title),
        &format!("/postings/{posting_id}/interest"),
    );
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Moves of the state machine

/// Applies `action` to the team inside `conn`'s transaction: checks the
/// move, writes the new state (guarded by the state read) and its history
/// row. Returns the state before and after.
async fn apply(
    conn: &mut AnyConnection,
    team_id: &str,
    action: TeamAction,
    by: &str,
    comment: &str,
) -> Result<(TeamState, TeamState)> {
    let state: TeamState = sqlx::query_scalar("SELECT state FROM project_teams WHERE id = $1")
        .bind(team_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ProjectError::Refused("team_not_found"))?;
    let next = state.after(action).map_err(ProjectError::Refused)?;
    if matches!(
        action,
        TeamAction::ApproveCompany | TeamAction::ApproveAdvisor
    ) {
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM project_team_members WHERE team_id = $1 AND status = 'invited'",
        )
        .bind(team_id)
        .fetch_one(&mut *conn)
        .await?;
        if pending > 0 {
            return Err(ProjectError::Refused("team_members_pending"));
        }
    }
    let at = now();
    let mut sql = String::from("UPDATE project_teams SET state = $1, updated_at = $2");
    let approver = match action {
        TeamAction::ApproveCompany => {
            sql.push_str(", company_approved_by = $5, company_approved_at = $2");
            true
        }
        TeamAction::ApproveAdvisor => {
            sql.push_str(", advisor_id = $5, advisor_approved_at = $2");
            true
        }
        _ => false,
    };
    if next == TeamState::Formed {
        sql.push_str(", formed_at = $2");
    }
    sql.push_str(" WHERE id = $3 AND state = $4");
    let mut q = sqlx::query(&sql)
        .bind(next.as_str())
        .bind(at)
        .bind(team_id)
        .bind(state.as_str());
    if approver {
        q = q.bind(by);
    }
    let r = q.persistent(false).execute(&mut *conn).await?;
    if r.rows_affected() != 1 {
        return Err(ProjectError::Refused("team_changed"));
    }
    if matches!(next, TeamState::Withdrawn | TeamState::Declined) {
        sqlx::query("UPDATE project_team_members SET active = 0 WHERE team_id = $1")
            .bind(team_id)
            .execute(&mut *conn)
            .await?;
    }
    record_event(conn, team_id, Some(state), next, by, comment).await?;
    Ok((state, next))
}

struct TeamFacts {
    name: String,
    posting_id: String,
    title: String,
    org_id: String,
    university_id: String,
    mentor_id: Option<String>,
}

async fn team_facts(conn: &mut AnyConnection, team_id: &str) -> Result<TeamFacts> {
    let row: Option<(String, String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT t.name, t.posting_id, p.title, p.org_id, p.university_id, p.mentor_id \
         FROM project_teams t JOIN postings p ON p.id = t.posting_id WHERE t.id = $1",
    )
    .bind(team_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (name, posting_id, title, org_id, university_id, mentor_id) =
        row.ok_or(ProjectError::Refused("team_not_found"))?;
    Ok(TeamFacts {
        name,
        posting_id,
        title,
        org_id,
        university_id,
        mentor_id,
    })
}

/// A faculty member of the posting's university endorses the team (once
/// each, while no approval has been given). The team and the company are
/// notified.
#[tracing::instrument(skip_all)]
pub async fn endorse(db: &Db, team_id: &str, by: &str, note: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    let facts = team_facts(&mut tx, team_id).await?;
    let state: TeamState = sqlx::query_scalar("SELECT state FROM project_teams WHERE id = $1")
        .bind(team_id)
        .fetch_one(&mut *tx)
        .await?;
    state
        .after(TeamAction::Endorse)
        .map_err(ProjectError::Refused)?;
    let inserted = sqlx::query(
        "INSERT INTO project_endorsements (team_id, user_id, note, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(team_id)
    .bind(by)
    .bind(note)
    .bind(now())
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(ProjectError::Refused("already_endorsed")),
        Err(e) => return Err(e.into()),
    }
    if state == TeamState::Interested {
        apply(&mut tx, team_id, TeamAction::Endorse, by, note).await?;
    } else {
        sqlx::query("UPDATE project_teams SET updated_at = $1 WHERE id = $2")
            .bind(now())
            .bind(team_id)
            .execute(&mut *tx)
            .await?;
    }
    let mut to = accepted_ids(&mut tx, team_id).await?;
    to.extend(org_member_ids(&mut tx, &facts.org_id).await?);
    to.extend(facts.mentor_id.clone());
    outbox.push(
        &to,
        &format!(
            "Faculty endorsed team “{}” on “{}”.",
            facts.name, facts.title
        ),
        &format!("/postings/{}/teams", facts.posting_id),
    );
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(())
}

/// The company approves the final team (`ApproveCompany`) or a faculty
/// member approves it and becomes its advisor (`ApproveAdvisor`). When the
/// other side has already approved, the team is formed and its project
/// space opens. Returns the new state.
#[tracing::instrument(skip_all)]
pub async fn approve(db: &Db, team_id: &str, action: TeamAction, by: &str) -> Result<TeamState> {
    if !matches!(
        action,
        TeamAction::ApproveCompany | TeamAction::ApproveAdvisor
    ) {
        return Err(ProjectError::Refused("team_action_invalid"));
    }
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    let facts = team_facts(&mut tx, team_id).await?;
    let (_, next) = apply(&mut tx, team_id, action, by, "").await?;
    notify_approval(&mut tx, &mut outbox, team_id, &facts, action, next).await?;
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(next)
}

async fn notify_approval(
    conn: &mut AnyConnection,
    outbox: &mut Outbox,
    team_id: &str,
    facts: &TeamFacts,
    action: TeamAction,
    next: TeamState,
) -> Result<()> {
    if next == TeamState::Formed {
        let mut to = participant_ids(conn, team_id).await?;
        to.extend(org_admin_ids(conn, &facts.university_id).await?);
        outbox.push(
            &to,
            &format!(
                "Team “{}” is formed for “{}”: the project space is open.",
                facts.name, facts.title
            ),
            &format!("/projects/{team_id}"),
        );
        return Ok(());
    }
    let mut to = accepted_ids(conn, team_id).await?;
    let side = if action == TeamAction::ApproveCompany {
        // The faculty still has to approve: tell the university's admins.
        to.extend(org_admin_ids(conn, &facts.university_id).await?);
        "The company"
    } else {
        to.extend(org_member_ids(conn, &facts.org_id).await?);
        to.extend(facts.mentor_id.clone());
        "A faculty advisor"
    };
    outbox.push(
        &to,
        &format!(
            "{side} approved team “{}” on “{}”.",
            facts.name, facts.title
        ),
        &format!("/postings/{}/teams", facts.posting_id),
    );
    Ok(())
}

/// The lead withdraws the team's interest; everyone on it is free again.
#[tracing::instrument(skip_all)]
pub async fn withdraw(db: &Db, team_id: &str, by: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    let facts = team_facts(&mut tx, team_id).await?;
    let mut to = accepted_ids(&mut tx, team_id).await?;
    apply(&mut tx, team_id, TeamAction::Withdraw, by, "").await?;
    to.extend(org_member_ids(&mut tx, &facts.org_id).await?);
    to.extend(facts.mentor_id.clone());
    to.retain(|id| id != by);
    outbox.push(
        &to,
        &format!("Team “{}” withdrew from “{}”.", facts.name, facts.title),
        &format!("/postings/{}/teams", facts.posting_id),
    );
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(())
}

/// The company or the faculty decline the team, with a reason the team sees.
#[tracing::instrument(skip_all)]
pub async fn decline(db: &Db, team_id: &str, by: &str, reason: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    let facts = team_facts(&mut tx, team_id).await?;
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM project_team_members WHERE team_id = $1 AND active = 1",
    )
    .bind(team_id)
    .fetch_all(&mut *tx)
    .await?;
    apply(&mut tx, team_id, TeamAction::Decline, by, reason).await?;
    outbox.push(
        &members,
        &format!("Team “{}” was declined for “{}”.", facts.name, facts.title),
        &format!("/postings/{}/interest", facts.posting_id),
    );
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The project space

/// Whether the user is an accepted member still on the team.
#[tracing::instrument(skip_all)]
pub async fn is_active_member(db: &Db, team_id: &str, user_id: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM project_team_members WHERE team_id = $1 AND user_id = $2 \
         AND status = 'accepted' AND active = 1",
    )
    .bind(team_id)
    .bind(user_id)
    .fetch_one(&db.pool)
    .await?;
    Ok(n > 0)
}

/// Refuses changes to the space of a team that is not formed.
async fn require_formed(conn: &mut AnyConnection, team_id: &str) -> Result<()> {
    let state: Option<TeamState> =
        sqlx::query_scalar("SELECT state FROM project_teams WHERE id = $1")
            .bind(team_id)
            .fetch_optional(&mut *conn)
            .await?;
    match state {
        Some(TeamState::Formed) => Ok(()),
        _ => Err(ProjectError::Refused("project_not_formed")),
    }
}

async fn notify_space(
    conn: &mut AnyConnection,
    outbox: &mut Outbox,
    team_id: &str,
    except: &str,
    message: &str,
    anchor: &str,
) -> Result<()> {
    let mut to = participant_ids(conn, team_id).await?;
    to.retain(|id| id != except);
    outbox.push(&to, message, &format!("/projects/{team_id}#{anchor}"));
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn milestones(db: &Db, team_id: &str) -> sqlx::Result<Vec<Milestone>> {
    sqlx::query_as(
        "SELECT m.id, m.title, m.description, m.due_on, m.status, u.display_name AS created_by_name, \
         m.created_at, m.updated_at, m.done_at FROM project_milestones m \
         LEFT JOIN users u ON u.id = m.created_by WHERE m.team_id = $1 ORDER BY m.due_on, m.created_at, m.id",
    )
    .bind(team_id)
    .fetch_all(&db.pool)
    .await
}

/// Adds a milestone (`due_on` is `YYYY-MM-DD`) and tells the others.
#[tracing::instrument(skip_all)]
pub async fn add_milestone(
    db: &Db,
    team_id: &str,
    by: &str,
    title: &str,
    description: &str,
    due_on: &str,
) -> Result<String> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    require_formed(&mut tx, team_id).await?;
    let id = new_id();
    let at = now();
    sqlx::query(
        "INSERT INTO project_milestones (id, team_id, title, description, due_on, status, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'planned', $6, $7, $7)",
    )
    .bind(&id)
    .bind(team_id)
    .bind(title)
    .bind(description)
    .bind(due_on)
    .bind(by)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let facts = team_facts(&mut tx, team_id).await?;
    notify_space(
        &mut tx,
        &mut outbox,
        team_id,
        by,
        &format!("New milestone in “{}”: {title} (due {due_on}).", facts.name),
        "milestones",
    )
    .await?;
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(id)
}

/// Sets a milestone's status; false when the team has no such milestone.
#[tracing::instrument(skip_all)]
pub async fn set_milestone_status(
    db: &Db,
    team_id: &str,
    milestone_id: &str,
    status: MilestoneStatus,
) -> Result<bool> {
    let mut tx = db.begin_write().await?;
    require_formed(&mut tx, team_id).await?;
    let at = now();
    let done_at = (status == MilestoneStatus::Done).then_some(at);
    let r = sqlx::query(
        "UPDATE project_milestones SET status = $1, updated_at = $2, done_at = $3 \
         WHERE id = $4 AND team_id = $5",
    )
    .bind(status.as_str())
    .bind(at)
    .bind(done_at)
    .bind(milestone_id)
    .bind(team_id)
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

#[tracing::instrument(skip_all)]
pub async fn messages(db: &Db, team_id: &str) -> sqlx::Result<Vec<Message>> {
    sqlx::query_as(
        "SELECT m.id, m.author_id, u.display_name AS author_name, m.body, m.created_at \
         FROM project_messages m LEFT JOIN users u ON u.id = m.author_id \
         WHERE m.team_id = $1 ORDER BY m.created_at, m.id",
    )
    .bind(team_id)
    .fetch_all(&db.pool)
    .await
}

/// Posts a message (Markdown) to the thread and tells the others.
#[tracing::instrument(skip_all)]
pub async fn post_message(db: &Db, team_id: &str, by: &str, body: &str) -> Result<String> {
    let mut tx = db.begin_write().await?;
    let mut outbox = Outbox::default();
    require_formed(&mut tx, team_id).await?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO project_messages (id, team_id, author_id, body, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(team_id)
    .bind(by)
    .bind(body)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    let facts = team_facts(&mut tx, team_id).await?;
    let who: String = sqlx::query_scalar("SELECT display_name FROM users WHERE id = $1")
        .bind(by)
        .fetch_one(&mut *tx)
        .await?;
    notify_space(
        &mut tx,
        &mut outbox,
        team_id,
        by,
        &format!("{who} wrote in “{}”.", facts.name),
        "messages",
    )
    .await?;
    tx.commit().await?;
    outbox.send(db).await?;
    Ok(id)
}

const FILE_SELECT: &str = "SELECT pf.id, pf.file_id, f.name, f.content_type, f.size, f.sha256, \
     u.display_name AS uploader_name, pf.created_at FROM project_files pf \
     JOIN stored_files f ON f.id = pf.file_id LEFT JOIN users u ON u.id = pf.uploaded_by";

#[tracing::instrument(skip_all)]
pub async fn files(db: &Db, team_id: &str) -> sqlx::Result<Vec<ProjectFile>> {
    sqlx::query_as(&format!(
        "{FILE_SELECT} WHERE pf.team_id = $1 ORDER BY pf.created_at DESC, pf.id DESC"
    ))
    .bind(team_id)
    .fetch_all(&db.pool)
    .await
}

/// One file of the team's space (never another team's).
#[tracing::instrument(skip_all)]
pub async fn file(db: &Db, team_id: &str, id: &str) -> sqlx::Result<Option<ProjectFile>> {
    sqlx::query_as(&format!(
        "{FILE_SELECT} WHERE pf.team_id = $1 AND pf.id = $2"
    ))
    .bind(team_id)
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

/// Records a checked upload in the team's space. `store` writes the bytes
/// before the commit, so a failed write leaves no row.
#[tracing::instrument(skip_all)]
pub async fn add_file<F, Fut>(
    db: &Db,
    team_id: &str,
    by: &str,
    upload: &crate::files::CheckedUpload,
    store: F,
) -> Result<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut tx = db.begin_write().await?;
    require_formed(&mut tx, team_id).await?;
    let file_id = super::files::insert(&mut *tx, by, upload).await?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO project_files (id, team_id, file_id, uploaded_by, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(team_id)
    .bind(&file_id)
    .bind(by)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    store().await?;
    tx.commit().await?;
    Ok(id)
}

// ---------------------------------------------------------------------------
// Demo data

/// Seeds a formed team on the demo's joint project (get-or-create: a team the
/// lead already leads on the posting is returned as it is). The team goes
/// through the real moves (endorsed and approved by `advisor_id`, approved by
/// `company_approver_id`), and its space gets two milestones and a first
/// message. The posting may be approved or open: seeding does not ask it to
/// accept applications.
#[tracing::instrument(skip_all)]
pub async fn seed_demo_team(
    db: &Db,
    posting_id: &str,
    lead_id: &str,
    member_ids: &[String],
    advisor_id: &str,
    company_approver_id: &str,
) -> anyhow::Result<String> {
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT id FROM project_teams WHERE posting_id = $1 AND lead_id = $2 ORDER BY created_at LIMIT 1",
    )
    .bind(posting_id)
    .bind(lead_id)
    .fetch_optional(&db.pool)
    .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let mut tx = db.begin_write().await?;
    let at = now();
    let team_id = new_id();
    sqlx::query(
        "INSERT INTO project_teams (id, posting_id, name, lead_id, statement, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'interested', $6, $6)",
    )
    .bind(&team_id)
    .bind(posting_id)
    .bind("Team Haneul")
    .bind(lead_id)
    .bind(
        "We took *Fine-tuning Small Models* together and want to try the techniques on a real \
         problem. Between us we cover data cleaning, training and evaluation.",
    )
    .bind(at)
    .execute(&mut *tx)
    .await?;
    insert_member(
        &mut tx,
        &team_id,
        posting_id,
        lead_id,
        "lead",
        MemberStatus::Accepted,
        Some(at),
    )
    .await?;
    for id in member_ids.iter().filter(|id| id.as_str() != lead_id) {
        insert_member(
            &mut tx,
            &team_id,
            posting_id,
            id,
            "member",
            MemberStatus::Accepted,
            Some(at),
        )
        .await?;
    }
    record_event(&mut tx, &team_id, None, TeamState::Interested, lead_id, "").await?;
    sqlx::query(
        "INSERT INTO project_endorsements (team_id, user_id, note, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&team_id)
    .bind(advisor_id)
    .bind("Strong students from AI501.")
    .bind(at)
    .execute(&mut *tx)
    .await?;
    apply(
        &mut tx,
        &team_id,
        TeamAction::Endorse,
        advisor_id,
        "Strong students from AI501.",
    )
    .await?;
    apply(
        &mut tx,
        &team_id,
        TeamAction::ApproveCompany,
        company_approver_id,
        "",
    )
    .await?;
    apply(
        &mut tx,
        &team_id,
        TeamAction::ApproveAdvisor,
        advisor_id,
        "",
    )
    .await?;
    for (title, weeks, status) in [
        ("Data audit and baseline", 2, MilestoneStatus::InProgress),
        (
            "First fine-tuned model and evaluation report",
            6,
            MilestoneStatus::Planned,
        ),
    ] {
        let due =
            (time::OffsetDateTime::now_utc().date() + time::Duration::weeks(weeks)).to_string();
        sqlx::query(
            "INSERT INTO project_milestones (id, team_id, title, description, due_on, status, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, '', $4, $5, $6, $7, $7)",
        )
        .bind(new_id())
        .bind(&team_id)
        .bind(title)
        .bind(due)
        .bind(status.as_str())
        .bind(company_approver_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO project_messages (id, team_id, author_id, body, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new_id())
    .bind(&team_id)
    .bind(company_approver_id)
    .bind("Welcome aboard! The dataset is linked on the posting; let's meet on **Monday** to agree on the baseline.")
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(team_id)
}

#[cfg(test)]
mod tests {
    use super::TeamAction::*;
    use super::TeamState::*;
    use super::*;

    #[test]
    fn the_state_machine() {
        let allowed = [
            (Interested, Endorse, Endorsed),
            (Endorsed, Endorse, Endorsed),
            (Interested, ApproveCompany, CompanyApproved),
            (Endorsed, ApproveCompany, CompanyApproved),
            (AdvisorApproved, ApproveCompany, Formed),
            (Interested, ApproveAdvisor, AdvisorApproved),
            (Endorsed, ApproveAdvisor, AdvisorApproved),
            (CompanyApproved, ApproveAdvisor, Formed),
        ];
        for (from, action, to) in allowed {
            assert_eq!(from.after(action), Ok(to), "{from} {action:?}");
        }
        for from in TeamState::ALL.iter().filter(|s| s.is_pending()) {
            assert_eq!(from.after(Withdraw), Ok(Withdrawn));
            assert_eq!(from.after(Decline), Ok(Declined));
        }
        for from in TeamState::ALL.iter().filter(|s| s.is_final()) {
            for action in [Endorse, ApproveCompany, ApproveAdvisor, Withdraw, Decline] {
                assert!(from.after(action).is_err(), "{from} {action:?}");
            }
        }
        assert_eq!(
            CompanyApproved.after(ApproveCompany),
            Err("team_company_already_approved")
        );
        assert_eq!(
            AdvisorApproved.after(ApproveAdvisor),
            Err("team_advisor_already_approved")
        );
        assert_eq!(
            CompanyApproved.after(Endorse),
            Err("team_endorsement_closed")
        );
        assert_eq!(Formed.after(Withdraw), Err("team_already_formed"));
    }

    #[test]
    fn late_milestones() {
        let m = |due: &str, status| Milestone {
            id: String::new(),
            title: String::new(),
            description: String::new(),
            due_on: due.into(),
            status,
            created_by_name: None,
            created_at: 0,
            updated_at: 0,
            done_at: None,
        };
        assert!(m("2027-01-01", MilestoneStatus::Planned).is_late("2027-01-02"));
        assert!(!m("2027-01-02", MilestoneStatus::InProgress).is_late("2027-01-02"));
        assert!(!m("2027-01-01", MilestoneStatus::Done).is_late("2027-03-01"));
    }

    #[test]
    fn team_limits() {
        assert_eq!(team_limit(Some(3)), 3);
        assert_eq!(team_limit(None), MAX_TEAM_SIZE);
        assert_eq!(team_limit(Some(0)), MAX_TEAM_SIZE);
    }
}
