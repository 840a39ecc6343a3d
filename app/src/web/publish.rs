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
use crate::auth::CourseCreator;
use crate::db::publish::{self as versions, LabVersion, Source};
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
}

async fn publish_page(
    state: &AppState,
    ctx: PageCtx,
    error: Option<String>,
    published: Option<Published>,
) -> AppResult<PublishPage> {
    let versions = versions::list(&state.db, LISTED)
        .await?
        .into_iter()
        .map(|v| row(state, v))
        .collect();
    Ok(PublishPage {
        ctx,
        versions,
        error,
        published,
        max_mb: MAX_ARCHIVE_BYTES / (1024 * 1024),
    })
}

pub async fn index(
    State(state): State<AppState>,
    ctx: PageCtx,
    _who: CourseCreator,
) -> AppResult<Response> {
    Ok(render(&publish_page(&state, ctx, None, None).await?))
}

/// The uploaded archive (multipart field `archive`).
pub async fn upload(
    State(state): State<AppState>,
    ctx: PageCtx,
    CourseCreator(user): CourseCreator,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<Response> {
    let mut multipart = multipart.map_err(|_| AppError::BadRequest("not_multipart"))?;
    let mut archive = None;
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
        }
    }
    let outcome = match archive {
        Some(bytes) if !bytes.is_empty() => {
            publish::publish(&state, bytes, Source::Upload, &user.id).await
        }
        _ => Err(publish::PublishError::Invalid(
            "choose a .tar, .tar.gz or .zip archive of the lab folder".into(),
        )),
    };
    match outcome {
        Ok(p) => Ok(render(&publish_page(&state, ctx, None, Some(p)).await?)),
        Err(publish::PublishError::Internal(e)) => Err(AppError::Internal(e)),
        Err(e) => {
            let page = publish_page(&state, ctx, Some(e.to_string()), None).await?;
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
    _who: CourseCreator,
    Path(lab_id): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> AppResult<Response> {
    let entry = preview_entry(&state, &lab_id, q.hash.as_deref()).await?;
    let version = versions::by_hash(&state.db, &lab_id, &entry.package.hash).await?;
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
