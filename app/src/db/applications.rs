//! Applications to postings: the pipeline, its history, and the posting
//! side's internal notes.

use sqlx::FromRow;

use super::{is_unique_violation, new_id, now, Db};
use crate::domain::{ApplicationState, PostingKind};

#[derive(Clone, Debug, FromRow)]
pub struct Application {
    pub id: String,
    pub posting_id: String,
    pub posting_title: String,
    pub posting_kind: PostingKind,
    pub posting_org_id: String,
    pub posting_org_name: String,
    pub applicant_id: String,
    pub applicant_name: String,
    pub applicant_email: String,
    pub statement: String,
    pub cv_file_id: Option<String>,
    pub cv_name: Option<String>,
    pub state: ApplicationState,
    pub created_at: i64,
    pub updated_at: i64,
}

const SELECT: &str =
    "SELECT a.id, a.posting_id, p.title AS posting_title, p.kind AS posting_kind, \
     p.org_id AS posting_org_id, o.name AS posting_org_name, a.applicant_id, \
     u.display_name AS applicant_name, u.email AS applicant_email, a.statement, a.cv_file_id, \
     f.name AS cv_name, a.state, a.created_at, a.updated_at FROM applications a \
     JOIN postings p ON p.id = a.posting_id JOIN organisations o ON o.id = p.org_id \
     JOIN users u ON u.id = a.applicant_id LEFT JOIN stored_files f ON f.id = a.cv_file_id";

#[derive(Clone, Debug, FromRow)]
pub struct ApplicationEvent {
    pub from_state: Option<ApplicationState>,
    pub to_state: ApplicationState,
    pub by_name: Option<String>,
    pub at: i64,
}

#[derive(Clone, Debug, FromRow)]
pub struct Note {
    pub author_name: Option<String>,
    pub body: String,
    pub created_at: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ApplyRefusal {
    AlreadyApplied,
}

/// Stores an application (and its CV row, when there is one) in one
/// transaction. `store_cv` writes the CV's bytes before the commit, so a
/// failed write stores nothing.
#[tracing::instrument(skip_all)]
pub async fn apply<F, Fut>(
    db: &Db,
    posting_id: &str,
    applicant_id: &str,
    statement: &str,
    cv: Option<&crate::files::CheckedUpload>,
    store_cv: F,
) -> anyhow::Result<Result<String, ApplyRefusal>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let id = new_id();
    let at = now();
    let mut tx = db.begin_write().await?;
    let cv_id = match cv {
        Some(upload) => Some(super::files::insert(&mut *tx, applicant_id, upload).await?),
        None => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO applications (id, posting_id, applicant_id, statement, cv_file_id, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'applied', $6, $6)",
    )
    .bind(&id)
    .bind(posting_id)
    .bind(applicant_id)
    .bind(statement)
    .bind(&cv_id)
    .bind(at)
    .persistent(false)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Ok(Err(ApplyRefusal::AlreadyApplied)),
        Err(e) => return Err(e.into()),
    }
    record_event(&mut tx, &id, None, ApplicationState::Applied, applicant_id).await?;
    if cv.is_some() {
        store_cv().await?;
    }
    tx.commit().await?;
    Ok(Ok(id))
}

#[tracing::instrument(skip_all)]
pub async fn get(db: &Db, id: &str) -> sqlx::Result<Option<Application>> {
    sqlx::query_as(&format!("{SELECT} WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// Moves an application from `from` to `to`; returns false, changing
/// nothing, when it is no longer in `from`.
#[tracing::instrument(skip_all)]
pub async fn move_to(
    db: &Db,
    id: &str,
    from: ApplicationState,
    to: ApplicationState,
    by: &str,
) -> sqlx::Result<bool> {
    let mut tx = db.begin_write().await?;
    let r = sqlx::query(
        "UPDATE applications SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
    )
    .bind(to.as_str())
    .bind(now())
    .bind(id)
    .bind(from.as_str())
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    record_event(&mut tx, id, Some(from), to, by).await?;
    tx.commit().await?;
    Ok(true)
}

async fn record_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    application_id: &str,
    from: Option<ApplicationState>,
    to: ApplicationState,
    by: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO application_events (id, application_id, from_state, to_state, by_user, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(application_id)
    .bind(from.map(ApplicationState::as_str))
    .bind(to.as_str())
    .bind(by)
    .bind(now())
    .persistent(false)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn events(db: &Db, application_id: &str) -> sqlx::Result<Vec<ApplicationEvent>> {
    sqlx::query_as(
        "SELECT e.from_state, e.to_state, u.display_name AS by_name, e.at FROM application_events e \
         LEFT JOIN users u ON u.id = e.by_user WHERE e.application_id = $1 ORDER BY e.at, e.id",
    )
    .bind(application_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn of_posting(db: &Db, posting_id: &str) -> sqlx::Result<Vec<Application>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE a.posting_id = $1 ORDER BY a.created_at"
    ))
    .bind(posting_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn of_applicant(db: &Db, user_id: &str) -> sqlx::Result<Vec<Application>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE a.applicant_id = $1 ORDER BY a.updated_at DESC"
    ))
    .bind(user_id)
    .fetch_all(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn of_posting_for(
    db: &Db,
    posting_id: &str,
    applicant_id: &str,
) -> sqlx::Result<Option<Application>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE a.posting_id = $1 AND a.applicant_id = $2"
    ))
    .bind(posting_id)
    .bind(applicant_id)
    .fetch_optional(&db.pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn add_note(db: &Db, application_id: &str, author: &str, body: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO application_notes (id, application_id, author_id, body, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new_id())
    .bind(application_id)
    .bind(author)
    .bind(body)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn notes(db: &Db, application_id: &str) -> sqlx::Result<Vec<Note>> {
    sqlx::query_as(
        "SELECT u.display_name AS author_name, n.body, n.created_at FROM application_notes n \
         LEFT JOIN users u ON u.id = n.author_id WHERE n.application_id = $1 ORDER BY n.created_at, n.id",
    )
    .bind(application_id)
    .fetch_all(&db.pool)
    .await
}
