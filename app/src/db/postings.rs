//! Postings (joint projects, internships, visiting positions) and their
//! approval state machine. Every state change is one guarded `UPDATE … WHERE
//! state IN (…)` plus a row in `posting_events`, in one transaction: a move
//! that is not allowed from the current state changes nothing.

use sqlx::FromRow;

use super::{new_id, now, Db};
use crate::domain::{PostingKind, PostingState};

/// The fields an author edits.
#[derive(Clone, Debug, Default)]
pub struct PostingFields {
    pub title: String,
    pub body: String,
    pub requirements: String,
    /// Stored form of [`crate::domain::Skills`].
    pub skills: String,
    pub role: String,
    pub location: String,
    pub remote: bool,
    pub starts_on: Option<String>,
    pub ends_on: Option<String>,
    pub compensation: String,
    pub apply_by: Option<i64>,
    pub dataset: String,
    pub duration_weeks: Option<i64>,
    pub team_size: Option<i64>,
    pub mentor_id: Option<String>,
    pub nda_required: bool,
}

#[derive(Clone, Debug, FromRow)]
pub struct Posting {
    pub id: String,
    pub kind: PostingKind,
    pub org_id: String,
    pub org_name: String,
    pub org_slug: String,
    pub university_id: String,
    pub university_name: String,
    pub title: String,
    pub body: String,
    pub requirements: String,
    pub skills: String,
    pub role: String,
    pub location: String,
    pub remote: i64,
    pub starts_on: Option<String>,
    pub ends_on: Option<String>,
    pub compensation: String,
    pub apply_by: Option<i64>,
    pub dataset: String,
    pub duration_weeks: Option<i64>,
    pub team_size: Option<i64>,
    pub mentor_id: Option<String>,
    pub mentor_name: Option<String>,
    pub nda_required: i64,
    pub state: PostingState,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Posting {
    /// Open, and the application deadline (if any) not passed.
    pub fn accepts_applications(&self, at: i64) -> bool {
        self.state == PostingState::Open && self.apply_by.is_none_or(|d| at <= d)
    }
    pub fn is_editable(&self) -> bool {
        matches!(
            self.state,
            PostingState::Draft | PostingState::ChangesRequested
        )
    }
}

const SELECT: &str = "SELECT p.id, p.kind, p.org_id, o.name AS org_name, o.slug AS org_slug, \
     p.university_id, un.name AS university_name, p.title, p.body, p.requirements, p.skills, \
     p.role, p.location, p.remote, p.starts_on, p.ends_on, p.compensation, p.apply_by, p.dataset, \
     p.duration_weeks, p.team_size, p.mentor_id, mu.display_name AS mentor_name, p.nda_required, \
     p.state, p.created_by, p.created_at, p.updated_at FROM postings p \
     JOIN organisations o ON o.id = p.org_id JOIN organisations un ON un.id = p.university_id \
     LEFT JOIN users mu ON mu.id = p.mentor_id";

#[derive(Clone, Debug, FromRow)]
pub struct PostingEvent {
    pub from_state: Option<PostingState>,
    pub to_state: PostingState,
    pub by_name: Option<String>,
    pub comment: String,
    pub at: i64,
}

/// Creates a draft.
#[tracing::instrument(skip_all)]
pub async fn create(
    db: &Db,
    kind: PostingKind,
    org_id: &str,
    university_id: &str,
    fields: &PostingFields,
    by: &str,
) -> sqlx::Result<String> {
    let id = new_id();
    let at = now();
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO postings (id, kind, org_id, university_id, title, body, requirements, skills, \
         role, location, remote, starts_on, ends_on, compensation, apply_by, dataset, duration_weeks, \
         team_size, mentor_id, nda_required, state, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, 'draft', $21, $22, $22)",
    )
    .bind(&id)
    .bind(kind.as_str())
    .bind(org_id)
    .bind(university_id)
    .bind(&fields.title)
    .bind(&fields.body)
    .bind(&fields.requirements)
    .bind(&fields.skills)
    .bind(&fields.role)
    .bind(&fields.location)
    .bind(i64::from(fields.remote))
    .bind(&fields.starts_on)
    .bind(&fields.ends_on)
    .bind(&fields.compensation)
    .bind(fields.apply_by)
    .bind(&fields.dataset)
    .bind(fields.duration_weeks)
    .bind(fields.team_size)
    .bind(&fields.mentor_id)
    .bind(i64::from(fields.nda_required))
    .bind(by)
    .bind(at)
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    record_event(&mut tx, &id, None, PostingState::Draft, by, "").await?;
    tx.commit().await?;
    Ok(id)
}

/// Saves an author's edits; only a draft or a posting sent back for changes
/// can be edited (returns false otherwise, changing nothing).
#[tracing::instrument(skip_all)]
pub async fn update(db: &Db, id: &str, fields: &PostingFields) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE postings SET title = $1, body = $2, requirements = $3, skills = $4, role = $5, \
         location = $6, remote = $7, starts_on = $8, ends_on = $9, compensation = $10, \
         apply_by = $11, dataset = $12, duration_weeks = $13, team_size = $14, mentor_id = $15, \
         nda_required = $16, updated_at = $17 \
         WHERE id = $18 AND state IN ('draft', 'changes_requested')",
    )
    .bind(&fields.title)
    .bind(&fields.body)
    .bind(&fields.requirements)
    .bind(&fields.skills)
    .bind(&fields.role)
    .bind(&fields.location)
    .bind(i64::from(fields.remote))
    .bind(&fields.starts_on)
    .bind(&fields.ends_on)
    .bind(&fields.compensation)
    .bind(fields.apply_by)
    .bind(&fields.dataset)
    .bind(fields.duration_weeks)
    .bind(fields.team_size)
    .bind(&fields.mentor_id)
    .bind(i64::from(fields.nda_required))
    .bind(now())
    .bind(id)
    .persistent(false)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[tracing::instrument(skip_all)]
pub async fn get(db: &Db, id: &str) -> sqlx::Result<Option<Posting>> {
    sqlx::query_as(&format!("{SELECT} WHERE p.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// Moves a posting from one of `from` to `to`, recording who and why.
/// Returns false, changing nothing, when the posting is in no state of `from`.
#[tracing::instrument(skip_all)]
pub async fn transition(
    db: &Db,
    id: &str,
    from: &[PostingState],
    to: PostingState,
    by: &str,
    comment: &str,
) -> sqlx::Result<bool> {
    let mut tx = db.begin_write().await?;
    let current: Option<PostingState> =
        sqlx::query_scalar("SELECT state FROM postings WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(current) = current.filter(|s| from.contains(s)) else {
        return Ok(false);
    };
    let r =
        sqlx::query("UPDATE postings SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4")
            .bind(to.as_str())
            .bind(now())
            .bind(id)
            .bind(current.as_str())
            .execute(&mut *tx)
            .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    record_event(&mut tx, id, Some(current), to, by, comment).await?;
    tx.commit().await?;
    Ok(true)
}

async fn record_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    posting_id: &str,
    from: Option<PostingState>,
    to: PostingState,
    by: &str,
    comment: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO posting_events (id, posting_id, from_state, to_state, by_user, comment, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(posting_id)
    .bind(from.map(PostingState::as_str))
    .bind(to.as_str())
    .bind(by)
    .bind(comment)
    .bind(now())
    .persistent(false)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn events(db: &Db, posting_id: &str) -> sqlx::Result<Vec<PostingEvent>> {
    sqlx::query_as(
        "SELECT e.from_state, e.to_state, u.display_name AS by_name, e.comment, e.at \
         FROM posting_events e LEFT JOIN users u ON u.id = e.by_user \
         WHERE e.posting_id = $1 ORDER BY e.at, e.id",
    )
    .bind(posting_id)
    .fetch_all(&db.pool)
    .await
}

/// Open postings whose application deadline passed become expired; returns
/// how many did.
#[tracing::instrument(skip_all)]
pub async fn expire_due(db: &Db) -> sqlx::Result<usize> {
    let at = now();
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM postings WHERE state = 'open' AND apply_by IS NOT NULL AND apply_by < $1",
    )
    .bind(at)
    .fetch_all(&db.pool)
    .await?;
    let mut n = 0;
    for id in due {
        let mut tx = db.begin_write().await?;
        let r = sqlx::query(
            "UPDATE postings SET state = 'expired', updated_at = $1 WHERE id = $2 AND state = 'open'",
        )
        .bind(at)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO posting_events (id, posting_id, from_state, to_state, by_user, comment, at) \
                 VALUES ($1, $2, 'open', 'expired', NULL, 'The application deadline passed.', $3)",
            )
            .bind(new_id())
            .bind(&id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            n += 1;
        }
        tx.commit().await?;
    }
    Ok(n)
}

/// Search filters; empty fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub text: String,
    /// One normalised skill.
    pub skill: String,
    pub org_id: String,
    pub kind: Option<PostingKind>,
    /// Only postings whose period overlaps [from, until] (ISO dates).
    pub from: Option<String>,
    pub until: Option<String>,
}

/// Who is looking: site admins see every open posting; everyone else the
/// open postings addressed to their universities (projects, internships),
/// visiting positions of universities their companies are approved with,
/// and everything of their own organisations.
pub struct Viewer<'a> {
    pub user_id: &'a str,
    pub is_admin: bool,
}

/// Open postings matching the filter that the viewer may see, newest first.
#[tracing::instrument(skip_all)]
pub async fn search(db: &Db, viewer: &Viewer<'_>, filter: &Filter) -> sqlx::Result<Vec<Posting>> {
    let mut sql = format!("{SELECT} WHERE p.state = 'open'");
    let mut args: Vec<String> = Vec::new();
    let arg = |v: String, args: &mut Vec<String>| {
        args.push(v);
        format!("${}", args.len())
    };
    if !viewer.is_admin {
        let u = arg(viewer.user_id.to_owned(), &mut args);
        sql.push_str(&format!(
            " AND (p.org_id IN (SELECT org_id FROM org_members WHERE user_id = {u}) \
             OR (p.kind IN ('project', 'internship') AND (\
                 p.university_id IN (SELECT c.university_id FROM enrollments e JOIN courses c ON c.id = e.course_id WHERE e.user_id = {u}) \
                 OR p.university_id IN (SELECT org_id FROM org_members WHERE user_id = {u}))) \
             OR (p.kind = 'visiting' AND p.university_id IN (\
                 SELECT oc.university_id FROM org_connections oc JOIN org_members m ON m.org_id = oc.company_id \
                 WHERE m.user_id = {u} AND oc.state = 'approved')))"
        ));
    }
    if !filter.text.trim().is_empty() {
        let t = arg(
            format!("%{}%", escape_like(&filter.text.trim().to_lowercase())),
            &mut args,
        );
        sql.push_str(&format!(
            " AND (LOWER(p.title) LIKE {t} ESCAPE '\\' OR LOWER(p.body) LIKE {t} ESCAPE '\\' OR LOWER(o.name) LIKE {t} ESCAPE '\\')"
        ));
    }
    if !filter.skill.is_empty() {
        let s = arg(format!("%,{},%", escape_like(&filter.skill)), &mut args);
        sql.push_str(&format!(" AND p.skills LIKE {s} ESCAPE '\\'"));
    }
    if !filter.org_id.is_empty() {
        let o = arg(filter.org_id.clone(), &mut args);
        sql.push_str(&format!(" AND p.org_id = {o}"));
    }
    if let Some(kind) = filter.kind {
        let k = arg(kind.as_str().to_owned(), &mut args);
        sql.push_str(&format!(" AND p.kind = {k}"));
    }
    if let Some(from) = &filter.from {
        let f = arg(from.clone(), &mut args);
        sql.push_str(&format!(" AND (p.ends_on IS NULL OR p.ends_on >= {f})"));
    }
    if let Some(until) = &filter.until {
        let u = arg(until.clone(), &mut args);
        sql.push_str(&format!(" AND (p.starts_on IS NULL OR p.starts_on <= {u})"));
    }
    sql.push_str(" ORDER BY p.updated_at DESC, p.id DESC LIMIT 200");
    let mut q = sqlx::query_as(&sql);
    for a in &args {
        q = q.bind(a);
    }
    q.persistent(false).fetch_all(&db.pool).await
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Every posting of an organisation, any state (for its own members).
#[tracing::instrument(skip_all)]
pub async fn of_org(db: &Db, org_id: &str) -> sqlx::Result<Vec<Posting>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE p.org_id = $1 ORDER BY p.updated_at DESC"
    ))
    .bind(org_id)
    .fetch_all(&db.pool)
    .await
}

/// Open postings of an organisation (its public page).
#[tracing::instrument(skip_all)]
pub async fn open_of_org(db: &Db, org_id: &str) -> sqlx::Result<Vec<Posting>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE p.org_id = $1 AND p.state = 'open' ORDER BY p.updated_at DESC"
    ))
    .bind(org_id)
    .fetch_all(&db.pool)
    .await
}

/// Postings waiting for a university's review.
#[tracing::instrument(skip_all)]
pub async fn awaiting_review(db: &Db, university_id: &str) -> sqlx::Result<Vec<Posting>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE p.university_id = $1 AND p.state = 'submitted' ORDER BY p.updated_at"
    ))
    .bind(university_id)
    .fetch_all(&db.pool)
    .await
}

/// The organisations that have open postings (for the search filter).
#[tracing::instrument(skip_all)]
pub async fn posting_orgs(db: &Db) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT DISTINCT o.id, o.name FROM postings p JOIN organisations o ON o.id = p.org_id \
         WHERE p.state = 'open' ORDER BY o.name",
    )
    .fetch_all(&db.pool)
    .await
}
