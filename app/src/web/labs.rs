//! Labs of a course: the lab page (instructions, the recipe form or code
//! editor, attempts left, history), submitting from it, the leaderboard, and
//! the instructor's settings (dates, late rule, limits, points, extensions).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use sanhak_runner::lab::LabKind;
use sanhak_runner::recipe::{ParamSpec, RecipeIssue};
use serde::Deserialize;
use tower_sessions::Session;

use super::markdown;
use super::templates::{datetime, flash, render, PageCtx};
use crate::auth::{CourseInstructor, CourseMember};
use crate::coursework::{self, Content, SubmitError, DAY};
use crate::db::courses::Course;
use crate::db::labs::{self as db_labs, Counts, CourseLab, LabSettings, LatePolicy, PrivateScores};
use crate::db::submissions::{self, AttemptRow};
use crate::db::{courses, users};
use crate::domain::CourseRole;
use crate::error::{AppError, AppResult};
use crate::queue::CatalogEntry;
use crate::state::AppState;

/// What the pages show of a lab package.
pub struct LabInfo {
    pub id: String,
    pub title: String,
    pub summary: String,
    pub version: String,
    pub is_recipe: bool,
    pub metric: String,
    pub points: f64,
    pub target: f64,
    pub gpu_memory_mb: u64,
    pub expected_gpu_seconds: f64,
    pub wall_seconds: u64,
}

impl LabInfo {
    pub fn of(entry: &CatalogEntry) -> LabInfo {
        let m = &entry.lab.manifest;
        LabInfo {
            id: m.id.clone(),
            title: m.title.clone(),
            summary: m.summary.clone(),
            version: entry.package.version.clone(),
            is_recipe: m.kind == LabKind::Recipe,
            metric: m.grading.metric.clone(),
            points: m.grading.points,
            target: m.grading.target,
            gpu_memory_mb: m.limits.gpu_memory_mb,
            expected_gpu_seconds: m.limits.expected_gpu_seconds,
            wall_seconds: m.limits.wall_seconds,
        }
    }
}

/// Human text of a course's rules for a lab.
pub fn late_rule(s: &LabSettings) -> String {
    match (s.due_at, s.late_policy) {
        (None, _) => "No deadline.".into(),
        (Some(_), LatePolicy::None) => "No late submissions.".into(),
        (Some(_), LatePolicy::Penalty) => format!(
            "Late submissions lose {}% per started day, for up to {} day{}.",
            fmt_num(s.late_penalty_pct),
            s.late_days,
            if s.late_days == 1 { "" } else { "s" }
        ),
    }
}

/// A number without a trailing `.0`.
pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// One field of the recipe form.
pub struct ParamField {
    pub name: String,
    /// `float`, `int`, `bool`, `choice` or `multi`.
    pub ty: &'static str,
    pub help: String,
    pub min: String,
    pub max: String,
    pub step: String,
    pub log_scale: bool,
    /// The current value as the number field shows it.
    pub value: String,
    /// The slider position, bounds and step (log10 on a log scale).
    pub slider: String,
    pub slider_min: String,
    pub slider_max: String,
    pub slider_step: String,
    pub checked: bool,
    /// Choices with whether each is selected.
    pub choices: Vec<(String, bool)>,
    pub error: Option<String>,
}

fn toml_number(v: Option<&toml::Value>) -> Option<f64> {
    match v? {
        toml::Value::Float(x) => Some(*x),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// The recipe form's fields, filled from `text` where it parses (defaults
/// elsewhere), with the errors of each parameter.
pub fn recipe_fields(params: &[ParamSpec], text: &str, issues: &[RecipeIssue]) -> Vec<ParamField> {
    let table: toml::Table = text.parse().unwrap_or_default();
    let mut errors: HashMap<&str, String> = HashMap::new();
    for i in issues {
        errors
            .entry(i.param.as_str())
            .and_modify(|m| {
                m.push_str("; ");
                m.push_str(&i.message)
            })
            .or_insert_with(|| i.message.clone());
    }
    params
        .iter()
        .map(|p| {
            let given = table.get(p.name());
            let error = errors.get(p.name()).cloned();
            let base = ParamField {
                name: p.name().to_owned(),
                ty: "float",
                help: String::new(),
                min: String::new(),
                max: String::new(),
                step: String::new(),
                log_scale: false,
                value: String::new(),
                slider: String::new(),
                slider_min: String::new(),
                slider_max: String::new(),
                slider_step: String::new(),
                checked: false,
                choices: Vec::new(),
                error,
            };
            match p {
                ParamSpec::Float {
                    min,
                    max,
                    default,
                    help,
                    log_scale,
                    ..
                } => {
                    let v = toml_number(given).unwrap_or(*default);
                    let log = *log_scale && *min > 0.0;
                    ParamField {
                        help: help.clone(),
                        min: format!("{min:e}"),
                        max: format!("{max:e}"),
                        step: "any".into(),
                        log_scale: log,
                        value: format!("{v}"),
                        slider: if log {
                            format!("{:.3}", v.max(*min).log10())
                        } else {
                            format!("{v}")
                        },
                        slider_min: if log {
                            format!("{:.3}", min.log10())
                        } else {
                            format!("{min}")
                        },
                        slider_max: if log {
                            format!("{:.3}", max.log10())
                        } else {
                            format!("{max}")
                        },
                        slider_step: if log {
                            "0.01".into()
                        } else {
                            format!("{}", (max - min) / 200.0)
                        },
                        ..base
                    }
                }
                ParamSpec::Int {
                    min,
                    max,
                    default,
                    help,
                    ..
                } => {
                    let v = match given {
                        Some(toml::Value::Integer(i)) => *i,
                        _ => *default,
                    };
                    ParamField {
                        ty: "int",
                        help: help.clone(),
                        min: min.to_string(),
                        max: max.to_string(),
                        step: "1".into(),
                        value: v.to_string(),
                        slider: v.to_string(),
                        slider_min: min.to_string(),
                        slider_max: max.to_string(),
                        slider_step: "1".into(),
                        ..base
                    }
                }
                ParamSpec::Bool { default, help, .. } => ParamField {
                    ty: "bool",
                    help: help.clone(),
                    checked: match given {
                        Some(toml::Value::Boolean(b)) => *b,
                        _ => *default,
                    },
                    ..base
                },
                ParamSpec::Choice {
                    choices,
                    default,
                    help,
                    ..
                } => {
                    let v = match given {
                        Some(toml::Value::String(s)) => s.clone(),
                        _ => default.clone(),
                    };
                    ParamField {
                        ty: "choice",
                        help: help.clone(),
                        choices: choices.iter().map(|c| (c.clone(), *c == v)).collect(),
                        ..base
                    }
                }
                ParamSpec::Multi {
                    choices,
                    default,
                    help,
                    ..
                } => {
                    let picked: Vec<String> = match given {
                        Some(toml::Value::Array(a)) => a
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect(),
                        _ => default.clone(),
                    };
                    ParamField {
                        ty: "multi",
                        help: help.clone(),
                        choices: choices
                            .iter()
                            .map(|c| (c.clone(), picked.contains(c)))
                            .collect(),
                        ..base
                    }
                }
            }
        })
        .collect()
}

/// One attempt in the history table.
pub struct HistoryRow {
    pub number: usize,
    pub job_id: String,
    pub submitted_at: i64,
    pub state: String,
    /// Course points after the penalty, when graded.
    pub points: Option<String>,
    pub public_metric: Option<String>,
    pub late: Option<String>,
    pub counted: bool,
}

/// Text for a lateness: "2 days late, −20%".
pub fn late_text(seconds: i64, penalty_pct: f64) -> Option<String> {
    if seconds <= 0 {
        return None;
    }
    let days = (seconds + DAY - 1) / DAY;
    Some(format!(
        "{days} day{} late, −{}%",
        if days == 1 { "" } else { "s" },
        fmt_num(penalty_pct)
    ))
}

/// The history rows of a student's attempts (newest first), numbered from
/// the first, with the counted one marked.
pub fn history(rows: &[AttemptRow], offered: &CourseLab, lab: &LabInfo) -> Vec<HistoryRow> {
    let attempts: Vec<_> = rows.iter().map(AttemptRow::attempt).collect();
    let counted = coursework::counted(
        &attempts,
        offered.settings.counts,
        lab.points,
        offered.settings.points,
    )
    .map(|a| a.job_id.clone());
    let n = rows.len();
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let a = r.attempt();
            HistoryRow {
                number: n - i,
                job_id: r.job_id.clone(),
                submitted_at: r.created_at,
                state: r.state.clone(),
                points: a
                    .is_graded()
                    .then(|| fmt_num(a.course_points(lab.points, offered.settings.points))),
                public_metric: r.public_metric.map(|m| format!("{m:.4}")),
                late: late_text(r.late_seconds, r.penalty_pct),
                counted: counted.as_deref() == Some(r.job_id.as_str()),
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "labs/show.html")]
pub struct LabPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub lab: LabInfo,
    pub offered: CourseLab,
    pub readme: Arc<String>,
    pub is_staff: bool,
    pub is_instructor: bool,
    /// The deadline that applies to this user, and whether it is an extension.
    pub due: Option<i64>,
    pub extended: bool,
    pub late_rule: String,
    pub course_points: String,
    pub attempts_used: i64,
    pub attempts_left: Option<i64>,
    pub day_used: i64,
    pub day_left: Option<i64>,
    /// Recipe labs: the form's fields and the TOML they make.
    pub fields: Vec<ParamField>,
    pub schema_json: String,
    /// The recipe TOML or the Rust source in the editor.
    pub text: String,
    /// Recipe labs: whether the form has separate steps/epochs.
    pub length_choice: Option<&'static str>,
    /// A problem with the whole submission (refused, not valid TOML).
    pub form_error: Option<String>,
    pub history: Vec<HistoryRow>,
    /// Whether submitting is possible now (and why not).
    pub closed: Option<String>,
    /// What is left of the GPU budget this user's runs draw on.
    pub gpu_budget: String,
    /// CPU labs: how their CPU-seconds are charged (empty: not at all).
    pub cpu_rate_text: String,
    /// The sponsoring company of a company-sponsored lab: (name, slug).
    pub sponsor: Option<(String, String)>,
}

impl LabPage {
    pub fn steps_chosen(&self) -> bool {
        self.length_choice != Some("epochs")
    }
}

/// The lab and its course entry, if the user may see it: staff always,
/// students once it is released.
async fn visible_lab(
    state: &AppState,
    access: &CourseMember,
    lab_id: &str,
) -> AppResult<(CourseLab, Arc<CatalogEntry>)> {
    let (offered, _) = visible_lab_for(state, access, lab_id).await?;
    Ok(offered)
}

/// [`visible_lab`] with the deadline that applies to the caller.
async fn visible_lab_for(
    state: &AppState,
    access: &CourseMember,
    lab_id: &str,
) -> AppResult<((CourseLab, Arc<CatalogEntry>), Option<i64>)> {
    let (offered, extended) =
        db_labs::get_for(&state.db, &access.course.id, lab_id, &access.user.id)
            .await?
            .ok_or(AppError::NotFound)?;
    if !access.is_staff() && !offered.is_released(crate::db::now()) {
        return Err(AppError::NotFound);
    }
    let entry = state.queue.catalog.get(lab_id).ok_or(AppError::NotFound)?;
    let due = extended.or(offered.settings.due_at);
    Ok(((offered, entry), due))
}

/// The text an editor starts from: the student's last submission, else the
/// lab's starter (recipe or `src/lib.rs`).
fn starter_text(entry: &CatalogEntry) -> String {
    let lab = &entry.lab;
    let path = match &lab.manifest.code {
        Some(code) => lab.dir().join(&code.starter).join("src/lib.rs"),
        None => lab.dir().join("starter/recipe.toml"),
    };
    std::fs::read_to_string(path).unwrap_or_default()
}

/// What a refused submission puts back on the lab page: the text as sent,
/// the recipe's problems, and a problem with the whole submission.
#[derive(Default)]
struct Draft<'a> {
    text: Option<String>,
    issues: &'a [RecipeIssue],
    form_error: Option<String>,
}

async fn lab_page(
    state: &AppState,
    ctx: PageCtx,
    access: &CourseMember,
    (offered, entry): (CourseLab, &CatalogEntry),
    due: Option<i64>,
    draft: Draft<'_>,
) -> AppResult<LabPage> {
    let Draft {
        text,
        issues,
        form_error,
    } = draft;
    let user = &access.user;
    let lab = LabInfo::of(entry);
    let readme = markdown::render_cached(&entry.package.hash, || {
        std::fs::read_to_string(entry.lab.dir().join("README.md")).unwrap_or_default()
    });
    let rows = submissions::of_student(&state.db, &offered.course_id, &lab.id, &user.id).await?;
    let sponsor = crate::db::publish::sponsor_of(&state.db, &lab.id, &entry.package.hash).await?;
    let extended = due != offered.settings.due_at;
    let now = crate::db::now();
    let attempts: Vec<_> = rows.iter().map(AttemptRow::attempt).collect();
    let attempts_used = attempts.iter().filter(|a| a.uses_an_attempt()).count() as i64;
    let day_used = attempts
        .iter()
        .filter(|a| a.uses_an_attempt() && a.submitted_at > now - DAY)
        .count() as i64;
    let attempts_left = offered
        .settings
        .max_attempts
        .map(|m| (m - attempts_used).max(0));
    let day_left = offered.settings.max_per_day.map(|m| (m - day_used).max(0));
    let staff = access.is_staff();
    let bound_ms =
        crate::db::vouchers::hold_bound_ms(&entry.resources(), state.queue.policy.cpu_rate);
    let budget =
        super::vouchers::lab_budget(state, &offered.course_id, &user.id, staff, bound_ms).await?;
    let closed = if let Some(r) = &budget.refusal {
        Some(r.message())
    } else if staff {
        None
    } else if let Err(r) = coursework::lateness(&offered.settings, due, now) {
        Some(r.message())
    } else if attempts_left == Some(0) {
        Some(
            coursework::Refusal::AttemptsUsed {
                max: offered.settings.max_attempts.unwrap_or(0),
            }
            .message(),
        )
    } else if day_left == Some(0) {
        Some(
            coursework::Refusal::DailyLimit {
                max: offered.settings.max_per_day.unwrap_or(0),
                next_at: None,
            }
            .message(),
        )
    } else {
        None
    };
    let text = match text {
        Some(t) => t,
        None if rows.is_empty() => starter_text(entry),
        None => submissions::latest_content(&state.db, &offered.course_id, &lab.id, &user.id)
            .await?
            .unwrap_or_else(|| starter_text(entry)),
    };
    let (fields, schema_json, length_choice) = match entry.lab.schema() {
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
            (
                recipe_fields(&schema.params, &text, issues),
                serde_json::to_string(schema).unwrap_or_else(|_| "{}".into()),
                choice,
            )
        }
        _ => (Vec::new(), "{}".into(), None),
    };
    let form_error = form_error.or_else(|| {
        let general: Vec<&str> = issues
            .iter()
            .filter(|i| i.param.is_empty() || !fields.iter().any(|f| f.name == i.param))
            .map(|i| i.message.as_str())
            .collect();
        (!general.is_empty()).then(|| general.join("; "))
    });
    let history = history(&rows, &offered, &lab);
    Ok(LabPage {
        ctx,
        course: access.course.clone(),
        course_points: fmt_num(offered.settings.points.unwrap_or(lab.points)),
        late_rule: late_rule(&offered.settings),
        lab,
        offered,
        readme,
        is_staff: staff,
        is_instructor: access.is_instructor(),
        due,
        extended,
        attempts_used,
        attempts_left,
        day_used,
        day_left,
        fields,
        schema_json: schema_json.replace("</", "<\\/"),
        text,
        length_choice,
        form_error,
        history,
        closed,
        gpu_budget: budget.text,
        cpu_rate_text: match state.queue.policy.cpu_rate {
            r if r > 0.0 => format!("{} GPU-seconds per CPU-second", fmt_num(r)),
            _ => String::new(),
        },
        sponsor,
    })
}

pub async fn show(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseMember,
    Path((_, lab_id)): Path<(String, String)>,
) -> AppResult<Response> {
    let ((offered, entry), due) = visible_lab_for(&state, &access, &lab_id).await?;
    let page = lab_page(
        &state,
        ctx,
        &access,
        (offered, &entry),
        due,
        Draft::default(),
    )
    .await?;
    Ok(render(&page))
}

#[derive(Deserialize)]
pub struct SubmitForm {
    pub recipe: Option<String>,
    pub code: Option<String>,
}

/// Submits from the lab page: on success to the job's page; otherwise the
/// lab page again with the problems next to their fields, nothing stored.
pub async fn submit(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseMember,
    Path((_, lab_id)): Path<(String, String)>,
    Form(form): Form<SubmitForm>,
) -> AppResult<Response> {
    if access.role != Some(CourseRole::Student) && !access.is_staff() {
        return Err(AppError::Forbidden);
    }
    let ((offered, entry), due) = visible_lab_for(&state, &access, &lab_id).await?;
    let (content, text) = match (form.recipe, form.code) {
        (Some(r), None) => (Content::Recipe(r.clone()), r),
        (None, Some(c)) => (Content::Code(c.clone()), c),
        _ => return Err(AppError::BadRequest("submission_missing")),
    };
    let staff = access.is_staff();
    match coursework::submit(&state, &offered, &entry, &access.user, staff, content).await {
        Ok(done) => Ok(Redirect::to(&format!("/jobs/{}", done.job_id)).into_response()),
        Err(SubmitError::Recipe(issues)) => {
            let draft = Draft {
                text: Some(text),
                issues: &issues,
                form_error: None,
            };
            let page = lab_page(&state, ctx, &access, (offered, &entry), due, draft).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(SubmitError::App(e @ (AppError::Refused { .. } | AppError::Unprocessable(_)))) => {
            let status = e.status();
            let draft = Draft {
                text: Some(text),
                issues: &[],
                form_error: Some(e.api_message()),
            };
            let page = lab_page(&state, ctx, &access, (offered, &entry), due, draft).await?;
            Ok((status, render(&page)).into_response())
        }
        Err(SubmitError::App(e)) => Err(e),
    }
}

/// One row of a leaderboard.
pub struct LeaderRow {
    pub rank: usize,
    pub name: String,
    pub is_me: bool,
    pub public: String,
    pub private: Option<String>,
    pub attempts: usize,
    pub last_at: i64,
}

#[derive(Template)]
#[template(path = "labs/leaderboard.html")]
pub struct LeaderboardPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub lab: LabInfo,
    pub rows: Vec<LeaderRow>,
    pub show_private: bool,
    pub private_note: String,
    pub is_student: bool,
    pub is_instructor: bool,
    pub my_name: String,
    pub higher_is_better: bool,
}

/// Whether students see private scores now.
pub fn private_visible(s: &LabSettings, now: i64) -> bool {
    match s.private_scores {
        PrivateScores::Released => true,
        PrivateScores::Hidden => false,
        PrivateScores::AfterDeadline => s.due_at.is_some_and(|d| now > d),
    }
}

pub async fn leaderboard(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseMember,
    Path((_, lab_id)): Path<(String, String)>,
) -> AppResult<Response> {
    let (offered, entry) = visible_lab(&state, &access, &lab_id).await?;
    let lab = LabInfo::of(&entry);
    let higher = entry.lab.manifest.grading.direction == sanhak_runner::lab::Direction::Higher;
    let staff = access.is_staff();
    let now = crate::db::now();
    let show_private = staff || private_visible(&offered.settings, now);
    let names: HashMap<String, Option<String>> =
        courses::leaderboard_names(&state.db, &offered.course_id)
            .await?
            .into_iter()
            .collect();
    let real: HashMap<String, String> = if staff {
        courses::roster(&state.db, &offered.course_id)
            .await?
            .into_iter()
            .map(|r| (r.user_id, r.display_name))
            .collect()
    } else {
        HashMap::new()
    };
    // Per student: best public metric, the private metric of that attempt,
    // attempts and the latest time.
    struct Best {
        public: f64,
        private: Option<f64>,
        attempts: usize,
        last_at: i64,
    }
    let mut best: BTreeMap<String, Best> = BTreeMap::new();
    for r in submissions::of_lab(&state.db, &offered.course_id, &lab_id).await? {
        let entry = best.entry(r.user_id.clone()).or_insert(Best {
            public: f64::NAN,
            private: None,
            attempts: 0,
            last_at: 0,
        });
        entry.attempts += 1;
        entry.last_at = entry.last_at.max(r.created_at);
        if r.state != "done" {
            continue;
        }
        if let Some(p) = r.public_metric.filter(|p| p.is_finite()) {
            let better = entry.public.is_nan()
                || if higher {
                    p > entry.public
                } else {
                    p < entry.public
                };
            if better {
                entry.public = p;
                entry.private = r.metric;
            }
        }
    }
    let mut ranked: Vec<(String, Best)> = best
        .into_iter()
        .filter(|(_, b)| !b.public.is_nan())
        .collect();
    ranked.sort_by(|a, b| {
        let o = a.1.public.total_cmp(&b.1.public);
        if higher {
            o.reverse()
        } else {
            o
        }
    });
    let mut anon = 0;
    let rows = ranked
        .into_iter()
        .enumerate()
        .map(|(i, (user_id, b))| {
            let chosen = names.get(&user_id).cloned().flatten();
            let name = match (&chosen, real.get(&user_id)) {
                (Some(n), Some(real)) => format!("{n} ({real})"),
                (Some(n), None) => n.clone(),
                (None, Some(real)) => format!("Anonymous ({real})"),
                (None, None) => {
                    anon += 1;
                    format!("Anonymous student {anon}")
                }
            };
            LeaderRow {
                rank: i + 1,
                is_me: user_id == access.user.id,
                name,
                public: format!("{:.4}", b.public),
                private: show_private
                    .then(|| b.private.map(|p| format!("{p:.4}")).unwrap_or_default()),
                attempts: b.attempts,
                last_at: b.last_at,
            }
        })
        .collect();
    let private_note = match offered.settings.private_scores {
        PrivateScores::Released => "Private scores are released.".to_owned(),
        PrivateScores::Hidden => "Private scores stay hidden from students.".to_owned(),
        PrivateScores::AfterDeadline => match offered.settings.due_at {
            Some(d) if now > d => "Private scores were revealed at the deadline.".to_owned(),
            Some(d) => format!(
                "Private scores are revealed after the deadline, {}.",
                datetime(&d)
            ),
            None => {
                "Private scores are revealed after the deadline; this lab has none yet.".to_owned()
            }
        },
    };
    let my_name = courses::leaderboard_names(&state.db, &offered.course_id)
        .await?
        .into_iter()
        .find(|(u, _)| *u == access.user.id)
        .and_then(|(_, n)| n)
        .unwrap_or_default();
    Ok(render(&LeaderboardPage {
        ctx,
        course: access.course.clone(),
        lab,
        rows,
        show_private,
        private_note,
        is_student: access.role == Some(CourseRole::Student),
        is_instructor: access.is_instructor(),
        my_name,
        higher_is_better: higher,
    }))
}

#[derive(Deserialize)]
pub struct NameForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub back: String,
}

/// A student's name on this course's leaderboards (empty: anonymous).
pub async fn set_leaderboard_name(
    State(state): State<AppState>,
    session: Session,
    access: CourseMember,
    Form(form): Form<NameForm>,
) -> AppResult<Response> {
    if access.role != Some(CourseRole::Student) {
        return Err(AppError::Forbidden);
    }
    let name = form.name.trim();
    if name.chars().count() > 40 || name.chars().any(char::is_control) {
        return Err(AppError::BadRequest("leaderboard_name_invalid"));
    }
    courses::set_leaderboard_name(
        &state.db,
        &access.course.id,
        &access.user.id,
        (!name.is_empty()).then_some(name),
    )
    .await?;
    flash(&session, "leaderboard_name_saved").await?;
    let back = if crate::error::is_local_path(&form.back) {
        form.back
    } else {
        format!("/courses/{}", access.course.id)
    };
    Ok(Redirect::to(&back).into_response())
}

/// A catalog lab an instructor can add to the course.
pub struct CatalogChoice {
    pub id: String,
    pub title: String,
}

#[derive(Template)]
#[template(path = "labs/settings.html")]
pub struct SettingsPage {
    pub ctx: PageCtx,
    pub course: Course,
    pub lab: LabInfo,
    pub form: SettingsForm,
    pub error: Option<String>,
    pub extensions: Vec<db_labs::Extension>,
    pub students: Vec<(String, String)>,
    pub ext_error: Option<String>,
    /// The lab's current package hash, the versions submissions ran
    /// against (version, hash, count), and the regrades so far.
    pub current_hash: String,
    pub versions: Vec<(String, String, i64)>,
    pub regrades: Vec<crate::db::regrades::Regrade>,
}

/// The settings form: times as `YYYY-MM-DDTHH:MM` in UTC, numbers as text.
#[derive(Deserialize, Default, Clone)]
pub struct SettingsForm {
    #[serde(default)]
    pub release_at: String,
    #[serde(default)]
    pub due_at: String,
    #[serde(default)]
    pub late_policy: String,
    #[serde(default)]
    pub late_penalty_pct: String,
    #[serde(default)]
    pub late_days: String,
    #[serde(default)]
    pub max_attempts: String,
    #[serde(default)]
    pub max_per_day: String,
    #[serde(default)]
    pub points: String,
    #[serde(default)]
    pub counts: String,
    #[serde(default)]
    pub private_scores: String,
}

const INPUT_TIME: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");

/// Unix seconds as a `datetime-local` value (UTC).
pub fn input_time(ts: Option<i64>) -> String {
    ts.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(INPUT_TIME).ok())
        .unwrap_or_default()
}

/// A `datetime-local` value (UTC) as unix seconds; empty is `None`.
pub fn parse_input_time(s: &str, field: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    // Browsers may add seconds; the minute is what counts.
    let s = s.get(..16).unwrap_or(s);
    time::PrimitiveDateTime::parse(s, INPUT_TIME)
        .map(|t| Some(t.assume_utc().unix_timestamp()))
        .map_err(|_| format!("{field}: give a date and time like 2027-03-15T23:59"))
}

impl SettingsForm {
    pub fn of(s: &LabSettings) -> Self {
        SettingsForm {
            release_at: input_time(s.release_at),
            due_at: input_time(s.due_at),
            late_policy: s.late_policy.as_str().into(),
            late_penalty_pct: fmt_num(s.late_penalty_pct),
            late_days: s.late_days.to_string(),
            max_attempts: s.max_attempts.map(|m| m.to_string()).unwrap_or_default(),
            max_per_day: s.max_per_day.map(|m| m.to_string()).unwrap_or_default(),
            points: s.points.map(fmt_num).unwrap_or_default(),
            counts: s.counts.as_str().into(),
            private_scores: s.private_scores.as_str().into(),
        }
    }

    pub fn parse(&self) -> Result<LabSettings, String> {
        fn int(s: &str, field: &str) -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse()
                .map(Some)
                .map_err(|_| format!("{field}: give a whole number, or leave it empty"))
        }
        fn num(s: &str, field: &str) -> Result<Option<f64>, String> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| format!("{field}: give a number, or leave it empty"))
        }
        let s = LabSettings {
            release_at: parse_input_time(&self.release_at, "release_at")?,
            due_at: parse_input_time(&self.due_at, "due_at")?,
            late_policy: LatePolicy::parse(&self.late_policy)
                .ok_or("late_policy: choose a late rule")?,
            late_penalty_pct: num(&self.late_penalty_pct, "late_penalty_pct")?.unwrap_or(0.0),
            late_days: int(&self.late_days, "late_days")?.unwrap_or(0),
            max_attempts: int(&self.max_attempts, "max_attempts")?,
            max_per_day: int(&self.max_per_day, "max_per_day")?,
            points: num(&self.points, "points")?,
            counts: Counts::parse(&self.counts).ok_or("counts: choose which attempt counts")?,
            private_scores: PrivateScores::parse(&self.private_scores)
                .ok_or("private_scores: choose when private scores show")?,
        };
        coursework::check_settings(&s)?;
        Ok(s)
    }
}

async fn settings_page(
    state: &AppState,
    ctx: PageCtx,
    access: &CourseInstructor,
    lab_id: &str,
    form: Option<SettingsForm>,
    error: Option<String>,
    ext_error: Option<String>,
) -> AppResult<SettingsPage> {
    let offered = db_labs::get(&state.db, &access.course.id, lab_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let entry = state.queue.catalog.get(lab_id).ok_or(AppError::NotFound)?;
    let students = courses::roster(&state.db, &access.course.id)
        .await?
        .into_iter()
        .filter(|r| r.role == CourseRole::Student)
        .map(|r| (r.user_id, format!("{} <{}>", r.display_name, r.email)))
        .collect();
    Ok(SettingsPage {
        ctx,
        course: access.course.clone(),
        lab: LabInfo::of(&entry),
        form: form.unwrap_or_else(|| SettingsForm::of(&offered.settings)),
        error,
        extensions: db_labs::extensions(&state.db, &access.course.id, lab_id).await?,
        students,
        ext_error,
        current_hash: entry.package.hash.clone(),
        versions: submissions::versions_of_lab(&state.db, &access.course.id, lab_id).await?,
        regrades: crate::db::regrades::of_lab(&state.db, &access.course.id, lab_id).await?,
    })
}

pub async fn settings(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseInstructor,
    Path((_, lab_id)): Path<(String, String)>,
) -> AppResult<Response> {
    Ok(render(
        &settings_page(&state, ctx, &access, &lab_id, None, None, None).await?,
    ))
}

pub async fn save_settings(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: CourseInstructor,
    Path((_, lab_id)): Path<(String, String)>,
    Form(form): Form<SettingsForm>,
) -> AppResult<Response> {
    if db_labs::get(&state.db, &access.course.id, &lab_id)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound);
    }
    match form.parse() {
        Ok(settings) => {
            db_labs::put(&state.db, &access.course.id, &lab_id, &settings).await?;
            flash(&session, "lab_settings_saved").await?;
            Ok(Redirect::to(&format!(
                "/courses/{}/labs/{lab_id}/settings",
                access.course.id
            ))
            .into_response())
        }
        Err(e) => {
            let page =
                settings_page(&state, ctx, &access, &lab_id, Some(form), Some(e), None).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
    }
}

#[derive(Deserialize)]
pub struct AddLabForm {
    #[serde(default)]
    pub lab_id: String,
}

/// Adds a catalog lab to the course with the default settings, then opens
/// its settings.
pub async fn add(
    State(state): State<AppState>,
    access: CourseInstructor,
    Form(form): Form<AddLabForm>,
) -> AppResult<Response> {
    if state.queue.catalog.get(&form.lab_id).is_none() {
        return Err(AppError::BadRequest("lab_unknown"));
    }
    if db_labs::get(&state.db, &access.course.id, &form.lab_id)
        .await?
        .is_none()
    {
        db_labs::put(
            &state.db,
            &access.course.id,
            &form.lab_id,
            &LabSettings::default(),
        )
        .await?;
    }
    Ok(Redirect::to(&format!(
        "/courses/{}/labs/{}/settings",
        access.course.id, form.lab_id
    ))
    .into_response())
}

#[derive(Deserialize)]
pub struct ExtensionForm {
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub due_at: String,
}

pub async fn grant_extension(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: CourseInstructor,
    Path((_, lab_id)): Path<(String, String)>,
    Form(form): Form<ExtensionForm>,
) -> AppResult<Response> {
    if db_labs::get(&state.db, &access.course.id, &lab_id)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound);
    }
    let role = courses::role_of(&state.db, &access.course.id, &form.user_id).await?;
    let due = parse_input_time(&form.due_at, "due_at");
    let problem = match (role, due) {
        (Some(CourseRole::Student), Ok(Some(_))) => None,
        (Some(CourseRole::Student), Ok(None)) => Some("due_at: give the new deadline".to_owned()),
        (_, Err(e)) => Some(e),
        _ => Some("user_id: choose a student of this course".to_owned()),
    };
    if let Some(e) = problem {
        let page = settings_page(&state, ctx, &access, &lab_id, None, None, Some(e)).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
    }
    let Ok(Some(due_at)) = parse_input_time(&form.due_at, "due_at") else {
        return Err(AppError::BadRequest("extension_invalid"));
    };
    db_labs::grant_extension(
        &state.db,
        &access.course.id,
        &lab_id,
        &form.user_id,
        due_at,
        &access.user.id,
    )
    .await?;
    flash(&session, "extension_granted").await?;
    Ok(Redirect::to(&format!(
        "/courses/{}/labs/{lab_id}/settings",
        access.course.id
    ))
    .into_response())
}

pub async fn revoke_extension(
    State(state): State<AppState>,
    session: Session,
    access: CourseInstructor,
    Path((_, lab_id, user_id)): Path<(String, String, String)>,
) -> AppResult<Response> {
    if !db_labs::revoke_extension(&state.db, &access.course.id, &lab_id, &user_id).await? {
        return Err(AppError::NotFound);
    }
    flash(&session, "extension_revoked").await?;
    Ok(Redirect::to(&format!(
        "/courses/{}/labs/{lab_id}/settings",
        access.course.id
    ))
    .into_response())
}

/// The course page's list of labs: what a member may see, with the
/// deadline that applies to them.
pub struct CourseLabRow {
    pub id: String,
    pub title: String,
    pub summary: String,
    pub due: Option<i64>,
    pub released: bool,
    pub release_at: Option<i64>,
}

pub async fn course_lab_rows(
    state: &AppState,
    course_id: &str,
    user_id: &str,
    staff: bool,
) -> AppResult<Vec<CourseLabRow>> {
    let now = crate::db::now();
    let mut rows = Vec::new();
    for offered in db_labs::of_course(&state.db, course_id).await? {
        let released = offered.is_released(now);
        if !staff && !released {
            continue;
        }
        let Some(entry) = state.queue.catalog.get(&offered.lab_id) else {
            continue;
        };
        rows.push(CourseLabRow {
            id: offered.lab_id.clone(),
            title: entry.lab.manifest.title.clone(),
            summary: entry.lab.manifest.summary.clone(),
            due: db_labs::due_for(&state.db, &offered, user_id).await?,
            released,
            release_at: offered.settings.release_at,
        });
    }
    Ok(rows)
}

/// Catalog labs not yet in the course (for the instructor's "add a lab").
pub async fn addable_labs(
    state: &AppState,
    rows: &[CourseLabRow],
) -> AppResult<Vec<CatalogChoice>> {
    // Company-sponsored labs are credited in the list: adopting one is
    // adding it to the course.
    let sponsored: HashMap<String, String> = crate::db::publish::live(&state.db)
        .await?
        .into_iter()
        .filter_map(|v| v.sponsor_name.map(|s| (v.lab_id, s)))
        .collect();
    let mut v: Vec<CatalogChoice> = state
        .queue
        .catalog
        .entries()
        .filter(|e| !rows.iter().any(|r| r.id == e.lab.manifest.id))
        .map(|e| CatalogChoice {
            id: e.lab.manifest.id.clone(),
            title: match sponsored.get(&e.lab.manifest.id) {
                Some(s) => format!("{} (sponsored by {s})", e.lab.manifest.title),
                None => e.lab.manifest.title.clone(),
            },
        })
        .collect();
    v.sort_by(|a, b| a.title.cmp(&b.title));
    Ok(v)
}

/// Names of users for pages that list them.
pub async fn display_name(state: &AppState, user_id: &str) -> AppResult<String> {
    Ok(users::by_id(&state.db, user_id)
        .await?
        .map(|u| u.display_name)
        .unwrap_or_default())
}
