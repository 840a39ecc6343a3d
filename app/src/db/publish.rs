//! Published lab package versions (`lab_versions`): immutable once recorded,
//! checked by `lab check --quick`, then live or rejected.

use sqlx::FromRow;

use super::{new_id, now, Db};

/// Where a version came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The labs folder, recorded at start.
    Folder,
    /// An archive uploaded in the browser.
    Upload,
    /// An archive posted to the API (`sanhak lab push`).
    Push,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Folder => "folder",
            Source::Upload => "upload",
            Source::Push => "push",
        }
    }
}

/// A version's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    Checking,
    Live,
    Rejected,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Checking => "checking",
            VersionState::Live => "live",
            VersionState::Rejected => "rejected",
        }
    }
}

/// One published version.
#[derive(Clone, Debug, FromRow)]
pub struct LabVersion {
    pub id: String,
    pub lab_id: String,
    pub version: String,
    pub content_hash: String,
    pub title: String,
    pub published_by: Option<String>,
    /// The publisher's display name, when known.
    pub publisher: Option<String>,
    pub published_at: i64,
    pub source: String,
    pub state: String,
    pub check_report: Option<String>,
    pub checked_at: Option<i64>,
    /// The sponsoring company of a company-sponsored lab.
    pub sponsor_org_id: Option<String>,
    pub sponsor_name: Option<String>,
    pub sponsor_slug: Option<String>,
}

impl LabVersion {
    pub fn is_live(&self) -> bool {
        self.state == VersionState::Live.as_str()
    }
    pub fn is_folder(&self) -> bool {
        self.source == Source::Folder.as_str()
    }
}

const COLUMNS: &str = "v.id, v.lab_id, v.version, v.content_hash, v.title, v.published_by, \
     u.display_name AS publisher, v.published_at, v.source, v.state, v.check_report, v.checked_at, \
     v.sponsor_org_id, o.name AS sponsor_name, o.slug AS sponsor_slug \
     FROM lab_versions v LEFT JOIN users u ON u.id = v.published_by \
     LEFT JOIN organisations o ON o.id = v.sponsor_org_id";

/// A version to record.
pub struct NewVersion<'a> {
    pub lab_id: &'a str,
    pub version: &'a str,
    pub content_hash: &'a str,
    pub title: &'a str,
    pub published_by: Option<&'a str>,
    pub source: Source,
    pub state: VersionState,
    pub check_report: Option<&'a str>,
    /// The company on whose behalf it is published.
    pub sponsor_org_id: Option<&'a str>,
}

/// Records a version; a (lab, version) already recorded is a unique violation.
#[tracing::instrument(skip_all)]
pub async fn insert(db: &Db, v: &NewVersion<'_>) -> sqlx::Result<String> {
    let id = new_id();
    let now = now();
    let checked_at = (v.state != VersionState::Checking).then_some(now);
    sqlx::query(
        "INSERT INTO lab_versions (id, lab_id, version, content_hash, title, published_by, published_at, \
         source, state, check_report, checked_at, sponsor_org_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&id)
    .bind(v.lab_id)
    .bind(v.version)
    .bind(v.content_hash)
    .bind(v.title)
    .bind(v.published_by)
    .bind(now)
    .bind(v.source.as_str())
    .bind(v.state.as_str())
    .bind(v.check_report)
    .bind(checked_at)
    .bind(v.sponsor_org_id)
    .persistent(false)
    .execute(&db.pool)
    .await?;
    Ok(id)
}

/// The version recorded under this version string, if any.
#[tracing::instrument(skip_all)]
pub async fn find(db: &Db, lab_id: &str, version: &str) -> sqlx::Result<Option<LabVersion>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE v.lab_id = $1 AND v.version = $2"
    ))
    .bind(lab_id)
    .bind(version)
    .fetch_optional(&db.pool)
    .await
}

/// A version by its lab and content hash (the newest, should two version
/// strings share content).
#[tracing::instrument(skip_all)]
pub async fn by_hash(db: &Db, lab_id: &str, hash: &str) -> sqlx::Result<Option<LabVersion>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE v.lab_id = $1 AND v.content_hash = $2 ORDER BY v.published_at DESC, v.id DESC"
    ))
    .bind(lab_id)
    .bind(hash)
    .fetch_optional(&db.pool)
    .await
}

/// Forgets a rejected version so that its version string can be published
/// again (its stored files stay; they are never overwritten).
#[tracing::instrument(skip_all)]
pub async fn forget_rejected(db: &Db, id: &str) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("DELETE FROM lab_versions WHERE id = $1 AND state = 'rejected'")
            .bind(id)
            .execute(&db.pool)
            .await?
            .rows_affected()
            > 0,
    )
}

/// Records the check's outcome of a version that is being checked.
#[tracing::instrument(skip_all)]
pub async fn set_checked(
    db: &Db,
    id: &str,
    state: VersionState,
    report: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE lab_versions SET state = $1, check_report = $2, checked_at = $3 \
         WHERE id = $4 AND state = 'checking'",
    )
    .bind(state.as_str())
    .bind(report)
    .bind(now())
    .bind(id)
    .execute(&db.pool)
    .await?
    .rows_affected()
        > 0)
}

/// Every version, newest first (at most `limit`).
#[tracing::instrument(skip_all)]
pub async fn list(db: &Db, limit: i64) -> sqlx::Result<Vec<LabVersion>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} ORDER BY v.published_at DESC, v.id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Stored versions (not from the labs folder) in a state, oldest first.
#[tracing::instrument(skip_all)]
pub async fn stored_in_state(db: &Db, state: VersionState) -> sqlx::Result<Vec<LabVersion>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE v.state = $1 AND v.source <> 'folder' ORDER BY v.published_at, v.id"
    ))
    .bind(state.as_str())
    .fetch_all(&db.pool)
    .await
}

/// Every live version, oldest first.
#[tracing::instrument(skip_all)]
pub async fn live(db: &Db) -> sqlx::Result<Vec<LabVersion>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE v.state = 'live' ORDER BY v.published_at, v.id"
    ))
    .fetch_all(&db.pool)
    .await
}

/// Who owns a lab id: `None` when it has no version yet; `Some(None)` for an
/// unsponsored lab; `Some(Some(org))` for a lab sponsored by `org` (fixed by
/// its first version).
#[tracing::instrument(skip_all)]
pub async fn owner_of(db: &Db, lab_id: &str) -> sqlx::Result<Option<Option<String>>> {
    let first: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT sponsor_org_id FROM lab_versions WHERE lab_id = $1 ORDER BY published_at, id LIMIT 1",
    )
    .bind(lab_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(first.map(|(o,)| o))
}

/// The sponsoring company of a lab version: (name, slug).
#[tracing::instrument(skip_all)]
pub async fn sponsor_of(
    db: &Db,
    lab_id: &str,
    hash: &str,
) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "SELECT o.name, o.slug FROM lab_versions v JOIN organisations o ON o.id = v.sponsor_org_id \
         WHERE v.lab_id = $1 AND v.content_hash = $2 ORDER BY v.published_at DESC LIMIT 1",
    )
    .bind(lab_id)
    .bind(hash)
    .fetch_optional(&db.pool)
    .await
}

/// Versions sponsored by one company, newest first.
#[tracing::instrument(skip_all)]
pub async fn of_sponsor(db: &Db, org_id: &str, limit: i64) -> sqlx::Result<Vec<LabVersion>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE v.sponsor_org_id = $1 ORDER BY v.published_at DESC, v.id DESC LIMIT $2"
    ))
    .bind(org_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}
