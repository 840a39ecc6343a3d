//! Publishing lab packages in the browser (instructors and site admins):
//! `/labs/publish` uploads an archive and lists every published version with
//! its state and check report; `/labs/{lab_id}/preview` shows a version as
//! students will see it.

use std::sync::Arc;

use askama::Template;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::response::{IntoResponse, Response};
use sanhak_runner::lab::Lab;
use serde::Deserialize;

use super::labs::{recipe_fields, LabInfo, ParamField};
use super::markdown;
use super::templates::{render, PageCtx};
use crate::auth::CurrentUser;
use crate::db::orgs::{self, Membership};
use crate::db::publish::{self as versions, LabVersion, Source};
use crate::db::users::User;
use crate::domain::{OrgKind, UserKind};
use crate::error::{AppError, AppResult};
use crate::publish::{self, Published, MAX_ARCHIVE_BYTES};
use crate::queue::{package_of, CatalogEntry};
use crate::state::AppState;

/// Versions listed on the page.
const LISTED: i64 = 200;

/// One published version as the page lists it.
pub struct VersionRow {
    pub lab_id: String,
    pub version: String,
    pub title: String,
    pub hash: String,
    pub state: String,
    pub source: String,
    pub publisher: Option<String>,
    pub published_at: i64,
    /// One line: passed, or the check's problems.
    pub summary: Option<String>,
    /// The whole report.
    pub report: Option<String>,
    /// Whether this is the lab's version students get now.
    pub current: bool,
    pub sponsor: Option<String>,
}

impl VersionRow {
    pub fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }
}

/// The check report's gist: its failures, or that it passed.
fn summary(report: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(report) {
        Ok(v) => match v.get("failures").and_then(|f| f.as_array()) {
            Some(f) if f.is_empty() => "check passed".to_owned(),
            Some(f) => f
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            None => report.to_owned(),
        },
        Err(_) => report.to_owned(),
    }
}

fn row(state: &AppState, v: LabVersion) -> VersionRow {
    let current = state
        .queue
        .catalog
        .get(&v.lab_id)
        .is_some_and(|e| e.package.hash == v.content_hash && v.is_live());
    VersionRow {
        summary: v.check_report.as_deref().map(summary),
        lab_id: v.lab_id,
        version: v.version,
        title: v.title,
        hash: v.content_hash,
        state: v.state,
        source: v.source,
        publisher: v.publisher,
        published_at: v.published_at,
        report: v.check_report,
        current,
        sponsor: v.sponsor_name,
    }
}

#[derive(Template)]
#[template(path = "labs/publish.html")]
pub struct PublishPage {
    pub ctx: PageCtx,
    pub versions: Vec<VersionRow>,
    pub error: Option<String>,
    pub published: Option<Published>,
    pub max_mb: usize,
    /// Companies the user may publish a sponsored lab for.
    pub sponsors: Vec<Membership>,
    /// Company accounts must choose a sponsor; instructors may.
    pub sponsor_required: bool,
}

/// Who may publish: instructors and site admins (any lab, optionally for a
/// company they belong to), and company members (sponsored labs of their
/// companies only).
pub struct Publisher {
    pub user: User,
    pub sponsors: Vec<Membership>,
}

impl Publisher {
    pub async fn of(state: &AppState, user: User) -> AppResult<Self> {
        let sponsors: Vec<Membership> = orgs::of_user(&state.db, &user.id)
            .await?
            .into_iter()
            .filter(|m| m.kind == OrgKind::Company)
            .collect();
        if !Self::may_publish_unsponsored(&user) && sponsors.is_empty() {
            return Err(AppError::Forbidden);
        }
        Ok(Publisher { user, sponsors })
    }
    fn may_publish_unsponsored(user: &User) -> bool {
        matches!(user.kind, UserKind::Instructor | UserKind::Admin)
    }
    pub fn sponsor_required(&self) -> bool {
        !Self::may_publish_unsponsored(&self.user)
    }
    /// The sponsor chosen in the form, checked against the user's companies.
    fn sponsor(&self, chosen: &str) -> Result<Option<String>, String> {
        if chosen.is_empty() {
            return if self.sponsor_required() {
                Err("choose the company that sponsors this lab".into())
            } else {
                Ok(None)
            };
        }
        self.sponsors
            .iter()
            .find(|m| m.id == chosen)
            .map(|m| Some(m.id.clone()))
            .ok_or_else(|| "you can only publish for a company you belong to".into())
    }
}

async fn publish_page(
    state: &AppState,
    ctx: PageCtx,
    publisher: &Publisher,
    error: Option<String>,
    published: Option<Published>,
) -> AppResult<PublishPage> {
    let listed = if publisher.sponsor_required() {
        let mut all = Vec::new();
        for m in &publisher.sponsors {
            all.extend(versions::of_sponsor(&state.db, &m.id, LISTED).await?);
        }
        all.sort_by_key(|v| std::cmp::Reverse(v.published_at));
        all
    } else {
        versions::list(&state.db, LISTED).await?
    };
    let versions = listed.into_iter().map(|v| row(state, v)).collect();
    Ok(PublishPage {
        ctx,
        versions,
        error,
        published,
        max_mb: MAX_ARCHIVE_BYTES / (1024 * 1024),
        sponsors: publisher.sponsors.clone(),
        sponsor_required: publisher.sponsor_required(),
    })
}

pub async fn index(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
) -> AppResult<Response> {
    let publisher = Publisher::of(&state, user).await?;
    Ok(render(
        &publish_page(&state, ctx, &publisher, None, None).await?,
    ))
}

/// The uploaded archive (multipart field `archive`).
pub async fn upload(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<Response> {
    let publisher = Publisher::of(&state, user).await?;
    let mut multipart = multipart.map_err(|_| AppError::BadRequest("not_multipart"))?;
    let mut archive = None;
    let mut sponsor = String::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|_| AppError::BadRequest("upload_failed"))?
    {
        if field.name() == Some("archive") {
            let bytes = field
                .bytes()
                .await
                .map_err(|_| AppError::BadRequest("upload_failed"))?;
            archive = Some(bytes.to_vec());
        } else if field.name() == Some("sponsor") {
            sponsor = field
                .text()
                .await
                .map_err(|_| AppError::BadRequest("upload_failed"))?;
        }
    }
    let sponsor = match publisher.sponsor(sponsor.trim()) {
        Ok(s) => s,
        Err(message) => {
            let page = publish_page(&state, ctx, &publisher, Some(message), None).await?;
            return Ok(
                (axum::http::StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response(),
            );
        }
    };
    let outcome = match archive {
        Some(bytes) if !bytes.is_empty() => {
            publish::publish(
                &state,
                bytes,
                Source::Upload,
                &publisher.user.id,
                sponsor.as_deref(),
            )
            .await
        }
        _ => Err(publish::PublishError::Invalid(
            "choose a .tar, .tar.gz or .zip archive of the lab folder".into(),
        )),
    };
    match outcome {
        Ok(p) => Ok(render(
            &publish_page(&state, ctx, &publisher, None, Some(p)).await?,
        )),
        Err(publish::PublishError::Internal(e)) => Err(AppError::Internal(e)),
        Err(e) => {
            let page = publish_page(&state, ctx, &publisher, Some(e.to_string()), None).await?;
            Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "labs/preview.html")]
pub struct PreviewPage {
    pub ctx: PageCtx,
    pub lab: LabInfo,
    pub hash: String,
    /// `live`, `checking` or `rejected`; `None` for a labs-folder lab not yet recorded.
    pub state: Option<String>,
    pub readme: Arc<String>,
    pub fields: Vec<ParamField>,
    /// The starter the editor opens with.
    pub text: String,
    pub length_choice: Option<&'static str>,
}

impl PreviewPage {
    pub fn points(&self) -> String {
        super::labs::fmt_num(self.lab.points)
    }
    pub fn steps_chosen(&self) -> bool {
        self.length_choice != Some("epochs")
    }
}

#[derive(Deserialize)]
pub struct PreviewQuery {
    /// A version's content hash; the latest live version when absent.
    pub hash: Option<String>,
}

/// The version to preview: from the catalog when live, else from the store.
async fn preview_entry(
    state: &AppState,
    lab_id: &str,
    hash: Option<&str>,
) -> AppResult<Arc<CatalogEntry>> {
    let Some(hash) = hash else {
        return state.queue.catalog.get(lab_id).ok_or(AppError::NotFound);
    };
    if let Some(e) = state.queue.catalog.get_version(lab_id, hash) {
        return Ok(e);
    }
    let v = versions::by_hash(&state.db, lab_id, hash)
        .await?
        .filter(|v| !v.is_folder())
        .ok_or(AppError::NotFound)?;
    let dir = publish::store_path(&state.config.data_dir, &v.lab_id, &v.content_hash);
    let entry = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok(Arc::new(package_of(Lab::load(&dir)?)?))
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))??;
    Ok(entry)
}

pub async fn preview(
    State(state): State<AppState>,
    ctx: PageCtx,
    CurrentUser(user): CurrentUser,
    Path(lab_id): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> AppResult<Response> {
    let entry = preview_entry(&state, &lab_id, q.hash.as_deref()).await?;
    let version = versions::by_hash(&state.db, &lab_id, &entry.package.hash).await?;
    // Instructors and site admins preview every lab; company members the
    // labs their companies sponsor.
    if !matches!(user.kind, UserKind::Instructor | UserKind::Admin) {
        let sponsor = version.as_ref().and_then(|v| v.sponsor_org_id.clone());
        let member = match sponsor {
            Some(org) => orgs::role_of(&state.db, &org, &user.id).await?.is_some(),
            None => false,
        };
        if !member {
            return Err(AppError::Forbidden);
        }
    }
    let lab = LabInfo::of(&entry);
    let dir = entry.lab.dir().to_path_buf();
    let readme = markdown::render_cached(&entry.package.hash, || {
        std::fs::read_to_string(dir.join("README.md")).unwrap_or_default()
    });
    let text =
        std::fs::read_to_string(entry.lab.dir().join("starter/recipe.toml")).unwrap_or_default();
    let (fields, length_choice) = match entry.lab.schema() {
        Ok(schema) if lab.is_recipe => {
            let table: toml::Table = text.parse().unwrap_or_default();
            let both = schema.get("steps").is_some() && schema.get("epochs").is_some();
            let choice = both.then(|| {
                if table.contains_key("epochs") && !table.contains_key("steps") {
                    "epochs"
                } else {
                    "steps"
                }
            });
            (recipe_fields(&schema.params, &text, &[]), choice)
        }
        _ => (Vec::new(), None),
    };
    Ok(render(&PreviewPage {
        ctx,
        hash: entry.package.hash.clone(),
        state: version.map(|v| v.state),
        lab,
        readme,
        fields,
        text,
        length_choice,
    }))
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn report_summaries_name_the_failures() {
        assert_eq!(summary(r#"{"failures": []}"#), "check passed");
        assert_eq!(
            summary(r#"{"failures": ["the starter earns 9 of 10 points", "x"]}"#),
            "the starter earns 9 of 10 points; x"
        );
        assert_eq!(summary("lab.toml: bad"), "lab.toml: bad");
    }
}
