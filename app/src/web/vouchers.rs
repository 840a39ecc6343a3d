//! GPU-credit vouchers: the site admin's list and grant form, and the budget
//! dashboards (course staff for a course, org admins for an organisation,
//! site admins for every budget): balance, usage over time, by lab and by
//! student, the forecast to the end of the vouchers, the per-student cap and
//! the ledger as CSV.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_sessions::Session;

use super::charts;
use super::courses::{csv_download, csv_file, csv_safe};
use super::labs::fmt_num;
use super::templates::{datetime, flash, render, with_errors, FormErrors, PageCtx};
use crate::auth::{CourseInstructor, CourseStaff, OrgAdmin, SiteAdmin};
use crate::db::courses::{self, Course};
use crate::db::orgs::{self, Org};
use crate::db::vouchers::{
    self, AdjustRefusal, CourseBudget, LedgerRow, NewVoucher, Scope, ScopeKind, Voucher,
    MS_PER_HOUR,
};
use crate::domain::MessageKey;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

const DAY: i64 = 86_400;
/// The forecast's rate is the use of this many recent days.
const FORECAST_DAYS: i64 = 14;
/// Days the usage chart shows at most.
const CHART_DAYS: i64 = 30;
/// Ledger rows the dashboard lists (the CSV has them all).
const RECENT_ROWS: usize = 50;
/// Largest voucher or adjustment, in GPU-hours.
const MAX_GPU_HOURS: f64 = 1_000_000.0;

/// An amount of GPU time for people: GPU-hours, or GPU-seconds when small.
pub fn amount(ms: i64) -> String {
    let sign = if ms < 0 { "−" } else { "" };
    let a = ms.unsigned_abs();
    if a >= MS_PER_HOUR as u64 / 10 {
        let h = format!("{:.3}", a as f64 / MS_PER_HOUR as f64);
        let h = h.trim_end_matches('0').trim_end_matches('.');
        format!("{sign}{h} GPU-hour{}", if h == "1" { "" } else { "s" })
    } else {
        format!("{sign}{} GPU-s", fmt_num(a as f64 / 1000.0))
    }
}

/// An exact amount in GPU-seconds for the CSV (three decimals, signed).
fn seconds_exact(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

/// A date (UTC) for pages.
fn date(ts: i64) -> String {
    datetime(&ts).get(..10).unwrap_or_default().to_owned()
}

/// A voucher as the pages show it.
pub struct VoucherView {
    pub id: String,
    pub scope: String,
    pub scope_href: String,
    pub source: String,
    pub tf_label: String,
    pub amount: String,
    pub balance: String,
    pub held: String,
    pub charged: String,
    pub valid: String,
    /// `active`, `expired` or `upcoming`.
    pub status: &'static str,
}

fn voucher_view(v: &Voucher, now: i64, scope: String, scope_href: String) -> VoucherView {
    VoucherView {
        id: v.id.clone(),
        scope,
        scope_href,
        source: v.source.clone(),
        tf_label: v.tf_label.clone(),
        amount: amount(v.amount_ms),
        balance: amount(v.balance_ms),
        held: amount(v.held_ms),
        charged: amount(v.charged_ms),
        valid: format!("{} – {}", date(v.valid_from), date(v.valid_until - 1)),
        status: if v.is_valid_at(now) {
            "active"
        } else if now < v.valid_from {
            "upcoming"
        } else {
            "expired"
        },
    }
}

/// One row of a usage table.
pub struct UsageRow {
    pub name: String,
    pub detail: String,
    pub used: String,
    pub held: String,
}

/// One recent ledger row.
pub struct LedgerView {
    pub at: String,
    pub kind: String,
    pub amount: String,
    pub source: String,
    pub what: String,
    pub job_id: Option<String>,
}

/// The per-student cap of a course, on its dashboard.
pub struct CapView {
    pub text: String,
    /// The form's value, in GPU-hours (empty: no cap).
    pub value: String,
    pub can_edit: bool,
}

#[derive(Template)]
#[template(path = "vouchers/budget.html")]
pub struct BudgetPage {
    pub ctx: PageCtx,
    pub heading: String,
    pub back_href: String,
    pub back_text: String,
    pub csv_href: String,
    pub cap_action: String,
    /// Which budget new jobs draw on, when it is not the page's own.
    pub note: Option<String>,
    pub vouchers: Vec<VoucherView>,
    pub available: String,
    pub held: String,
    pub used: String,
    pub forecast: String,
    pub chart_days: String,
    pub chart_labs: String,
    pub by_lab: Vec<UsageRow>,
    pub by_student: Vec<UsageRow>,
    pub by_course: Vec<UsageRow>,
    pub recent: Vec<LedgerView>,
    pub cap: Option<CapView>,
    pub cap_error: Option<&'static str>,
}

/// Use per key: charged, and held by running jobs.
#[derive(Default, Clone, Copy)]
struct Use {
    charged: i64,
    held: i64,
}

fn add_use(map: &mut BTreeMap<String, Use>, key: String, r: &LedgerRow) {
    let u = map.entry(key).or_default();
    match r.kind.as_str() {
        "charge" => u.charged -= r.amount_ms,
        "hold" | "release" => u.held -= r.amount_ms,
        _ => {}
    }
}

fn usage_rows(map: BTreeMap<String, Use>, detail: &HashMap<String, String>) -> Vec<UsageRow> {
    let mut rows: Vec<(String, Use)> = map.into_iter().collect();
    rows.sort_by(|a, b| b.1.charged.cmp(&a.1.charged).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(name, u)| UsageRow {
            detail: detail.get(&name).cloned().unwrap_or_default(),
            name,
            used: amount(u.charged),
            held: amount(u.held),
        })
        .collect()
}

/// The forecast to the end of the valid vouchers at the recent rate.
fn forecast(rows: &[LedgerRow], valid: &[&Voucher], available_ms: i64, now: i64) -> String {
    let Some(end) = valid.iter().map(|v| v.valid_until).max() else {
        return "No voucher is valid now, so new runs cannot start.".into();
    };
    let first = rows.iter().map(|r| r.at).min().unwrap_or(now);
    let days = ((now - first) as f64 / DAY as f64).clamp(1.0, FORECAST_DAYS as f64);
    let recent: i64 = rows
        .iter()
        .filter(|r| r.kind == "charge" && r.at > now - FORECAST_DAYS * DAY)
        .map(|r| -r.amount_ms)
        .sum();
    let per_day = recent as f64 / days;
    let end_text = date(end - 1);
    let over = match days.round() as i64 {
        1 => "day".to_owned(),
        n => format!("{n} days"),
    };
    if per_day <= 0.0 {
        return format!(
            "Nothing was used in the last {over}; at that rate all {} will be left when the vouchers end on {end_text}.",
            amount(available_ms)
        );
    }
    let rate = format!(
        "At the current rate ({} a day over the last {over})",
        amount(per_day.round() as i64),
    );
    let runs_out = now + (available_ms as f64 / per_day * DAY as f64) as i64;
    if runs_out < end {
        format!(
            "{rate}, the budget runs out around {}, before the vouchers end on {end_text}.",
            date(runs_out)
        )
    } else {
        let left = available_ms - (per_day * (end - now) as f64 / DAY as f64) as i64;
        format!(
            "{rate}, about {} will be left when the vouchers end on {end_text}.",
            amount(left.max(0))
        )
    }
}

/// What a budget dashboard shows, from its vouchers and ledger.
struct Built {
    vouchers: Vec<VoucherView>,
    available: i64,
    held: i64,
    used: i64,
    forecast: String,
    chart_days: String,
    chart_labs: String,
    by_lab: Vec<UsageRow>,
    by_student: Vec<UsageRow>,
    by_course: Vec<UsageRow>,
    recent: Vec<LedgerView>,
}

fn build(vouchers: &[Voucher], rows: &[LedgerRow], now: i64, scope_name: &str) -> Built {
    let valid: Vec<&Voucher> = vouchers.iter().filter(|v| v.is_valid_at(now)).collect();
    let available = valid.iter().map(|v| v.balance_ms.max(0)).sum();
    let charges = rows.iter().filter(|r| r.kind == "charge");
    let used = charges.clone().map(|r| -r.amount_ms).sum();
    let held = rows
        .iter()
        .filter(|r| r.kind == "hold" || r.kind == "release")
        .map(|r| -r.amount_ms)
        .sum();
    // Use per day over the last CHART_DAYS days (or since the first row).
    let today = now.div_euclid(DAY);
    let first_day = rows
        .iter()
        .map(|r| r.at.div_euclid(DAY))
        .min()
        .unwrap_or(today)
        .max(today - CHART_DAYS + 1);
    let mut per_day: BTreeMap<i64, i64> = (first_day..=today).map(|d| (d, 0)).collect();
    for r in charges.clone() {
        if let Some(v) = per_day.get_mut(&r.at.div_euclid(DAY)) {
            *v -= r.amount_ms;
        }
    }
    let day_items: Vec<(String, f64)> = per_day
        .iter()
        .map(|(d, ms)| (date(d * DAY), *ms as f64))
        .collect();
    let day_max = day_items.iter().map(|d| d.1).fold(0.0, f64::max);
    let show = |v: f64| amount(v as i64);
    let chart_days = charts::bars(
        &format!("GPU use per day, {scope_name}"),
        &day_items,
        day_max,
        show,
    );
    let mut by_lab = BTreeMap::new();
    let mut by_student = BTreeMap::new();
    let mut by_course = BTreeMap::new();
    let mut emails = HashMap::new();
    for r in rows.iter().filter(|r| r.job_id.is_some()) {
        add_use(&mut by_lab, r.lab_id.clone().unwrap_or_default(), r);
        let who = r
            .user_name
            .clone()
            .or_else(|| r.user_id.clone())
            .unwrap_or_default();
        if let Some(e) = &r.user_email {
            emails.insert(who.clone(), e.clone());
        }
        add_use(&mut by_student, who, r);
        add_use(
            &mut by_course,
            r.course_code.clone().unwrap_or_else(|| "(deleted)".into()),
            r,
        );
    }
    let lab_items: Vec<(String, f64)> = by_lab
        .iter()
        .map(|(k, u)| (k.clone(), u.charged as f64))
        .collect();
    let lab_max = lab_items.iter().map(|d| d.1).fold(0.0, f64::max);
    let chart_labs = charts::bars(
        &format!("GPU use by lab, {scope_name}"),
        &lab_items,
        lab_max,
        show,
    );
    let recent = rows
        .iter()
        .rev()
        .take(RECENT_ROWS)
        .map(|r| LedgerView {
            at: datetime(&r.at),
            kind: r.kind.clone(),
            amount: amount(r.amount_ms),
            source: r.source.clone(),
            what: match (&r.lab_id, &r.user_name) {
                (Some(lab), Some(name)) => format!("{lab} · {name}"),
                (Some(lab), None) => lab.clone(),
                _ => r.note.clone(),
            },
            job_id: r.job_id.clone(),
        })
        .collect();
    Built {
        forecast: forecast(rows, &valid, available, now),
        vouchers: vouchers
            .iter()
            .map(|v| voucher_view(v, now, String::new(), String::new()))
            .collect(),
        available,
        held,
        used,
        chart_days,
        chart_labs,
        by_lab: usage_rows(by_lab, &HashMap::new()),
        by_student: usage_rows(by_student, &emails),
        by_course: usage_rows(by_course, &HashMap::new()),
        recent,
    }
}

struct PageParts {
    heading: String,
    back_href: String,
    back_text: String,
    base: String,
    note: Option<String>,
    cap: Option<CapView>,
    cap_error: Option<&'static str>,
    with_courses: bool,
}

fn budget_page(ctx: PageCtx, b: Built, p: PageParts) -> BudgetPage {
    BudgetPage {
        ctx,
        heading: p.heading,
        back_href: p.back_href,
        back_text: p.back_text,
        csv_href: format!("{}.csv", p.base),
        cap_action: format!("{}/cap", p.base),
        note: p.note,
        vouchers: b.vouchers,
        available: amount(b.available),
        held: amount(b.held),
        used: amount(b.used),
        forecast: b.forecast,
        chart_days: b.chart_days,
        chart_labs: b.chart_labs,
        by_lab: b.by_lab,
        by_student: b.by_student,
        by_course: if p.with_courses {
            b.by_course
        } else {
            Vec::new()
        },
        recent: b.recent,
        cap: p.cap,
        cap_error: p.cap_error,
    }
}

/// The ledger as CSV, oldest first: exact amounts in GPU-seconds; text
/// cells a spreadsheet would read as a formula are neutralised.
pub fn ledger_csv(rows: &[LedgerRow]) -> AppResult<String> {
    let internal = |e: csv::Error| AppError::Internal(anyhow::Error::new(e).context("ledger csv"));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "at_utc",
        "voucher",
        "source",
        "kind",
        "gpu_seconds",
        "measured_gpu_seconds",
        "job",
        "course",
        "lab",
        "student",
        "note",
        "by",
    ])
    .map_err(internal)?;
    for r in rows {
        w.write_record([
            datetime(&r.at),
            r.voucher_id.clone(),
            csv_safe(&r.source),
            r.kind.clone(),
            seconds_exact(r.amount_ms),
            r.measured_ms.map(seconds_exact).unwrap_or_default(),
            r.job_id.clone().unwrap_or_default(),
            csv_safe(r.course_code.as_deref().unwrap_or_default()),
            csv_safe(r.lab_id.as_deref().unwrap_or_default()),
            csv_safe(r.user_email.as_deref().unwrap_or_default()),
            csv_safe(&r.note),
            csv_safe(r.created_by_email.as_deref().unwrap_or_default()),
        ])
        .map_err(internal)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| AppError::Internal(anyhow::anyhow!("ledger csv: {e}")))?;
    String::from_utf8(bytes).map_err(|e| AppError::Internal(anyhow::Error::new(e)))
}

/// GPU-hours typed in a form, as milli-GPU-seconds.
fn parse_hours(s: &str, allow_negative: bool) -> Result<i64, MessageKey> {
    let h: f64 = s.trim().parse().map_err(|_| "gpu_hours_invalid")?;
    let ok = h.is_finite() && h.abs() <= MAX_GPU_HOURS && (h > 0.0 || (allow_negative && h < 0.0));
    if !ok {
        return Err("gpu_hours_invalid");
    }
    let ms = (h * MS_PER_HOUR as f64).round() as i64;
    if ms == 0 {
        return Err("gpu_hours_invalid");
    }
    Ok(ms)
}

/// A date typed in a form (`YYYY-MM-DD`) as the unix second it starts (UTC).
fn parse_date(s: &str) -> Result<i64, MessageKey> {
    time::Date::parse(
        s.trim(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map(|d| d.midnight().assume_utc().unix_timestamp())
    .map_err(|_| "dates_invalid")
}

/// Text without control characters, trimmed, at most `max` characters.
fn plain(s: &str, max: usize) -> Result<String, MessageKey> {
    let s = s.trim();
    if s.chars().count() > max {
        return Err("text_too_long");
    }
    if s.chars().any(char::is_control) {
        return Err("text_invalid");
    }
    Ok(s.to_owned())
}

// ---------------------------------------------------------------- course

async fn course_page(
    state: &AppState,
    ctx: PageCtx,
    course: &Course,
    can_edit_cap: bool,
    cap_error: Option<&'static str>,
) -> AppResult<BudgetPage> {
    let now = crate::db::now();
    let scope = Scope::course(&course.id);
    let own = vouchers::of_scope(&state.db, &scope).await?;
    let rows = vouchers::ledger(&state.db, &scope).await?;
    let pays = vouchers::course_budget(&state.db, &course.id).await?;
    let mut built = build(&own, &rows, now, &course.code);
    let note = match &pays {
        CourseBudget::Unmetered => Some(
            "This course has no GPU voucher, nor has its university: runs are not metered.".into(),
        ),
        CourseBudget::Metered {
            scope: Some(s),
            available_ms,
            ..
        } if s.kind == ScopeKind::Org => {
            // New jobs draw on the university's pool: show what it has left.
            built.available = *available_ms;
            Some(format!(
                "This course has no valid voucher with credit left, so its runs draw on {}'s budget, which has {} left.",
                course.university_name,
                amount(*available_ms)
            ))
        }
        CourseBudget::Metered { scope: None, .. } => Some(
            "No voucher of this course or its university is valid with credit left: new runs are refused."
                .into(),
        ),
        CourseBudget::Metered { .. } => None,
    };
    let cap = vouchers::student_cap(&state.db, &course.id).await?;
    let cap = CapView {
        text: match cap {
            Some(c) => format!("Each student may use at most {} of this budget.", amount(c)),
            None => "No per-student cap: any student may use the whole budget.".into(),
        },
        value: cap
            .map(|c| fmt_num(c as f64 / MS_PER_HOUR as f64))
            .unwrap_or_default(),
        can_edit: can_edit_cap,
    };
    Ok(budget_page(
        ctx,
        built,
        PageParts {
            heading: format!("GPU budget · {}", course.code),
            back_href: format!("/courses/{}", course.id),
            back_text: format!("{} · {} · {}", course.code, course.title, course.term),
            base: format!("/courses/{}/budget", course.id),
            note,
            cap: Some(cap),
            cap_error,
            with_courses: false,
        },
    ))
}

/// `GET /courses/{course_id}/budget`: course staff and site admins.
pub async fn course(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: CourseStaff,
) -> AppResult<Response> {
    let can_edit = access.is_instructor();
    let page = course_page(&state, ctx, &access.course, can_edit, None).await?;
    Ok(render(&page))
}

/// `GET /courses/{course_id}/budget.csv`.
pub async fn course_csv(State(state): State<AppState>, access: CourseStaff) -> AppResult<Response> {
    let rows = vouchers::ledger(&state.db, &Scope::course(&access.course.id)).await?;
    Ok(csv_download(
        "gpu-ledger",
        &access.course,
        ledger_csv(&rows)?,
    ))
}

#[derive(Deserialize)]
pub struct CapForm {
    /// GPU-hours per student; empty removes the cap.
    #[serde(default)]
    pub cap_gpu_hours: String,
}

/// `POST /courses/{course_id}/budget/cap`: instructors set or remove the
/// per-student cap.
pub async fn set_cap(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    access: CourseInstructor,
    Form(form): Form<CapForm>,
) -> AppResult<Response> {
    let cap = if form.cap_gpu_hours.trim().is_empty() {
        None
    } else {
        match parse_hours(&form.cap_gpu_hours, false) {
            Ok(ms) => Some(ms),
            Err(key) => {
                let page = course_page(&state, ctx, &access.course, true, Some(key)).await?;
                return Ok(with_errors(&page));
            }
        }
    };
    vouchers::set_student_cap(&state.db, &access.course.id, cap, &access.user.id).await?;
    flash(
        &session,
        if cap.is_some() {
            "gpu_cap_saved"
        } else {
            "gpu_cap_removed"
        },
    )
    .await?;
    Ok(Redirect::to(&format!("/courses/{}/budget", access.course.id)).into_response())
}

// ---------------------------------------------------------------- org

/// `GET /orgs/{slug}/budget`: org admins and site admins.
pub async fn org(
    State(state): State<AppState>,
    ctx: PageCtx,
    access: OrgAdmin,
) -> AppResult<Response> {
    let now = crate::db::now();
    let scope = Scope::org(&access.org.id);
    let list = vouchers::of_scope(&state.db, &scope).await?;
    let rows = vouchers::ledger(&state.db, &scope).await?;
    let built = build(&list, &rows, now, &access.org.name);
    let note = list
        .is_empty()
        .then(|| "This organisation has no GPU voucher yet. Site admins grant them.".to_owned());
    Ok(render(&budget_page(
        ctx,
        built,
        PageParts {
            heading: format!("GPU budget · {}", access.org.name),
            back_href: format!("/orgs/{}", access.org.slug),
            back_text: access.org.name.clone(),
            base: format!("/orgs/{}/budget", access.org.slug),
            note,
            cap: None,
            cap_error: None,
            with_courses: true,
        },
    )))
}

/// `GET /orgs/{slug}/budget.csv`.
pub async fn org_csv(State(state): State<AppState>, access: OrgAdmin) -> AppResult<Response> {
    let rows = vouchers::ledger(&state.db, &Scope::org(&access.org.id)).await?;
    Ok(csv_file(
        &format!("gpu-ledger-{}", access.org.slug),
        ledger_csv(&rows)?,
    ))
}

// ---------------------------------------------------------------- projects

/// A project id as given in a path or form: the app's ids are UUIDs.
fn project_id(raw: &str) -> Option<String> {
    let s = raw.trim();
    (!s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then(|| s.to_owned())
}

/// `GET /admin/vouchers/projects/{project_id}`: a project's budget (site admins).
pub async fn project(
    State(state): State<AppState>,
    ctx: PageCtx,
    _: SiteAdmin,
    Path(raw): Path<String>,
) -> AppResult<Response> {
    let id = project_id(&raw).ok_or(AppError::NotFound)?;
    let now = crate::db::now();
    let scope = Scope::project(&id);
    let list = vouchers::of_scope(&state.db, &scope).await?;
    if list.is_empty() {
        return Err(AppError::NotFound);
    }
    let rows = vouchers::ledger(&state.db, &scope).await?;
    let built = build(&list, &rows, now, "project");
    Ok(render(&budget_page(
        ctx,
        built,
        PageParts {
            heading: format!("GPU budget · project {id}"),
            back_href: "/admin/vouchers".into(),
            back_text: "All vouchers".into(),
            base: format!("/admin/vouchers/projects/{id}"),
            note: None,
            cap: None,
            cap_error: None,
            with_courses: false,
        },
    )))
}

/// `GET /admin/vouchers/projects/{project_id}/ledger.csv`.
pub async fn project_csv(
    State(state): State<AppState>,
    _: SiteAdmin,
    Path(raw): Path<String>,
) -> AppResult<Response> {
    let id = project_id(&raw).ok_or(AppError::NotFound)?;
    let rows = vouchers::ledger(&state.db, &Scope::project(&id)).await?;
    Ok(csv_file(
        &format!("gpu-ledger-project-{id}"),
        ledger_csv(&rows)?,
    ))
}

// ---------------------------------------------------------------- admin

#[derive(Deserialize, Default)]
pub struct GrantForm {
    /// `course:<id>`, `org:<id>` or `project`.
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub gpu_hours: String,
    #[serde(default)]
    pub tf_label: String,
    #[serde(default)]
    pub valid_from: String,
    #[serde(default)]
    pub valid_until: String,
    #[serde(default)]
    pub source: String,
}

#[derive(Template)]
#[template(path = "vouchers/admin.html")]
pub struct AdminPage {
    pub ctx: PageCtx,
    pub vouchers: Vec<VoucherView>,
    pub courses: Vec<Course>,
    pub orgs: Vec<Org>,
    pub form: GrantForm,
    pub errors: FormErrors,
}

async fn admin_page(
    state: &AppState,
    ctx: PageCtx,
    form: GrantForm,
    errors: FormErrors,
) -> AppResult<AdminPage> {
    let now = crate::db::now();
    let courses = courses::list_all(&state.db).await?;
    let orgs = orgs::list(&state.db).await?;
    let course_names: HashMap<&str, &Course> = courses.iter().map(|c| (c.id.as_str(), c)).collect();
    let org_names: HashMap<&str, &Org> = orgs.iter().map(|o| (o.id.as_str(), o)).collect();
    let vouchers = vouchers::all(&state.db)
        .await?
        .iter()
        .map(|v| {
            let (scope, href) = match (ScopeKind::parse(&v.scope_kind), v.scope_id.as_str()) {
                (Some(ScopeKind::Course), id) => match course_names.get(id) {
                    Some(c) => (
                        format!("Course {} · {}", c.code, c.term),
                        format!("/courses/{id}/budget"),
                    ),
                    None => ("A deleted course".into(), String::new()),
                },
                (Some(ScopeKind::Org), id) => match org_names.get(id) {
                    Some(o) => (o.name.clone(), format!("/orgs/{}/budget", o.slug)),
                    None => ("A deleted organisation".into(), String::new()),
                },
                (_, id) => (
                    format!("Project {id}"),
                    format!("/admin/vouchers/projects/{id}"),
                ),
            };
            voucher_view(v, now, scope, href)
        })
        .collect();
    Ok(AdminPage {
        ctx,
        vouchers,
        courses,
        orgs,
        form,
        errors,
    })
}

/// `GET /admin/vouchers`: every voucher, and the form to grant one.
pub async fn admin_index(
    State(state): State<AppState>,
    ctx: PageCtx,
    _: SiteAdmin,
) -> AppResult<Response> {
    let today = date(crate::db::now());
    let form = GrantForm {
        valid_from: today,
        ..GrantForm::default()
    };
    Ok(render(
        &admin_page(&state, ctx, form, FormErrors::default()).await?,
    ))
}

/// `POST /admin/vouchers`: a site admin grants a voucher.
pub async fn grant(
    State(state): State<AppState>,
    ctx: PageCtx,
    session: Session,
    SiteAdmin(admin): SiteAdmin,
    Form(form): Form<GrantForm>,
) -> AppResult<Response> {
    let mut errors = FormErrors::default();
    let scope = match form.scope.split_once(':') {
        Some(("course", id)) => courses::by_id(&state.db, id)
            .await?
            .map(|c| Scope::course(&c.id)),
        Some(("org", id)) => orgs::by_id(&state.db, id).await?.map(|o| Scope::org(&o.id)),
        None if form.scope == "project" => {
            project_id(&form.project_id).map(|id| Scope::project(&id))
        }
        _ => None,
    };
    let scope = errors.check("scope", scope.ok_or("voucher_scope_invalid"));
    let amount_ms = errors.check("gpu_hours", parse_hours(&form.gpu_hours, false));
    let tf_label = errors.check("tf_label", plain(&form.tf_label, 40));
    let source = errors.check(
        "source",
        plain(&form.source, 200).and_then(|s| {
            if s.is_empty() {
                Err("voucher_source_required")
            } else {
                Ok(s)
            }
        }),
    );
    let from = errors.check("valid_from", parse_date(&form.valid_from));
    let until = errors.check("valid_until", parse_date(&form.valid_until));
    // The last day counts in full.
    let until = until.map(|u| u + DAY);
    if let (Some(f), Some(u)) = (from, until) {
        if u <= f {
            errors.add("valid_until", "dates_invalid");
        }
    }
    match (scope, amount_ms, tf_label, source, from, until) {
        (Some(scope), Some(amount_ms), Some(tf_label), Some(source), Some(from), Some(until))
            if errors.is_empty() =>
        {
            vouchers::grant(
                &state.db,
                &NewVoucher {
                    scope: &scope,
                    amount_ms,
                    tf_label: &tf_label,
                    valid_from: from,
                    valid_until: until,
                    source: &source,
                    granted_by: &admin.id,
                },
            )
            .await?;
            flash(&session, "voucher_granted").await?;
            Ok(Redirect::to("/admin/vouchers").into_response())
        }
        _ => Ok(with_errors(&admin_page(&state, ctx, form, errors).await?)),
    }
}

#[derive(Deserialize)]
pub struct AdjustForm {
    #[serde(default)]
    pub gpu_hours: String,
    #[serde(default)]
    pub note: String,
}

/// `POST /admin/vouchers/{voucher_id}/adjust`: a site admin adds or removes
/// credit, with the reason, as a new ledger row.
pub async fn adjust(
    State(state): State<AppState>,
    session: Session,
    SiteAdmin(admin): SiteAdmin,
    Path(voucher_id): Path<String>,
    Form(form): Form<AdjustForm>,
) -> AppResult<Response> {
    vouchers::by_id(&state.db, &voucher_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let amount_ms = parse_hours(&form.gpu_hours, true).map_err(AppError::BadRequest)?;
    let note = plain(&form.note, 200).map_err(AppError::BadRequest)?;
    if note.is_empty() {
        return Err(AppError::BadRequest("adjustment_note_required"));
    }
    match vouchers::adjust(&state.db, &voucher_id, amount_ms, &note, &admin.id).await? {
        Ok(()) => {
            flash(&session, "voucher_adjusted").await?;
            Ok(Redirect::to("/admin/vouchers").into_response())
        }
        Err(AdjustRefusal::NoSuchVoucher) => Err(AppError::NotFound),
        Err(AdjustRefusal::BelowZero { .. }) => Err(AppError::Conflict("adjustment_below_zero")),
    }
}

// ---------------------------------------------------------------- lab page

/// The lab page's "GPU budget" line for one user, and the refusal a new
/// run would meet now (if any).
pub struct LabBudget {
    pub text: String,
    pub refusal: Option<crate::coursework::Refusal>,
}

/// What a user has left of the budget their runs in this course draw on.
pub async fn lab_budget(
    state: &AppState,
    course_id: &str,
    user_id: &str,
    staff: bool,
    bound_ms: i64,
) -> AppResult<LabBudget> {
    use crate::coursework::Refusal;
    let budget = vouchers::course_budget(&state.db, course_id).await?;
    let CourseBudget::Metered {
        available_ms,
        scope,
        ..
    } = budget
    else {
        return Ok(LabBudget {
            text: "Not metered: this course has no GPU voucher.".into(),
            refusal: None,
        });
    };
    let hold = if bound_ms > 0 {
        format!(" A run holds up to {} until it ends.", amount(bound_ms))
    } else {
        " Runs of this lab are not charged.".into()
    };
    let whose = match scope {
        Some(s) if s.kind == ScopeKind::Org => "your university's",
        _ => "the course's",
    };
    let mut text = format!("{} left in {whose} budget.", amount(available_ms));
    let mut refusal = (available_ms == 0 && bound_ms > 0).then_some(Refusal::BudgetExhausted);
    if !staff {
        if let Some(cap) = vouchers::student_cap(&state.db, course_id).await? {
            let used = vouchers::student_used(&state.db, course_id, user_id).await?;
            let left = (cap - used).max(0);
            text.push_str(&format!(
                " Your share: {} of {} left.",
                amount(left),
                amount(cap)
            ));
            if left == 0 && bound_ms > 0 && refusal.is_none() {
                refusal = Some(Refusal::StudentCap { cap_ms: cap });
            }
        }
    }
    text.push_str(&hold);
    Ok(LabBudget { text, refusal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_well_and_csv_amounts_are_exact() {
        assert_eq!(amount(3_600_000), "1 GPU-hour");
        assert_eq!(amount(9_000_000), "2.5 GPU-hours");
        assert_eq!(amount(61_728), "61.73 GPU-s");
        assert_eq!(amount(-360_000), "−0.1 GPU-hours");
        assert_eq!(seconds_exact(61_728), "61.728");
        assert_eq!(seconds_exact(-5), "-0.005");
        assert_eq!(seconds_exact(0), "0.000");
    }

    #[test]
    fn form_hours_are_checked() {
        assert_eq!(parse_hours("1", false), Ok(3_600_000));
        assert_eq!(parse_hours("0.5", false), Ok(1_800_000));
        assert!(parse_hours("0", false).is_err());
        assert!(parse_hours("-1", false).is_err());
        assert_eq!(parse_hours("-1", true), Ok(-3_600_000));
        assert!(parse_hours("NaN", true).is_err());
        assert!(parse_hours("1e9", false).is_err());
        assert!(parse_hours("lots", false).is_err());
    }
}
