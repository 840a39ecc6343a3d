//! The rules of coursework: when a lab takes submissions, what a late one
//! costs, how many attempts a student has, and which attempt counts. The
//! rules are plain functions of the settings and the clock; [`submit`] applies
//! them and stores a submission, and is shared by the pages and the API.

use sanhak_runner::lab::LabKind;
use sanhak_runner::protocol::SubmissionKind;
use sanhak_runner::recipe::RecipeIssue;

use crate::db::jobs::{self, AttemptLimits, NewSubmission, SubmitRefusal};
use crate::db::labs::{self as db_labs, Counts, CourseLab, LabSettings, LatePolicy};
use crate::db::users::User;
use crate::db::vouchers::BudgetRefusal;
use crate::error::AppError;
use crate::queue::CatalogEntry;
use crate::state::AppState;

pub const DAY: i64 = 86_400;

/// Largest recipe or source file accepted.
pub const MAX_SUBMISSION_BYTES: usize = 64 * 1024;

/// How late a submission is, and what it costs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lateness {
    /// Seconds after the deadline (0: on time).
    pub seconds: i64,
    /// Started days late.
    pub days: i64,
    /// Percent of the points lost.
    pub penalty_pct: f64,
}

/// Why the rules refuse a submission now.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    NotReleased {
        release_at: i64,
    },
    PastDeadline {
        due_at: i64,
    },
    LateWindowClosed {
        closed_at: i64,
    },
    AttemptsUsed {
        max: i64,
    },
    DailyLimit {
        max: i64,
        next_at: Option<i64>,
    },
    /// The GPU budget the course's jobs run under is used up or expired.
    BudgetExhausted,
    /// The student used their cap on the course's GPU budget (milli-GPU-seconds).
    StudentCap {
        cap_ms: i64,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotReleased { .. } => "not_released",
            Refusal::PastDeadline { .. } | Refusal::LateWindowClosed { .. } => "deadline_passed",
            Refusal::AttemptsUsed { .. } => "attempts_used",
            Refusal::DailyLimit { .. } => "daily_limit",
            Refusal::BudgetExhausted => "budget_exhausted",
            Refusal::StudentCap { .. } => "gpu_cap_reached",
        }
    }

    pub fn message(&self) -> String {
        let at = |t: &i64| crate::web::templates::datetime(t);
        match self {
            Refusal::NotReleased { release_at } => {
                format!("This lab opens on {}.", at(release_at))
            }
            Refusal::PastDeadline { due_at } => format!(
                "The deadline passed on {}, and this lab takes no late submissions.",
                at(due_at)
            ),
            Refusal::LateWindowClosed { closed_at } => format!(
                "Late submissions closed on {}.",
                at(closed_at)
            ),
            Refusal::AttemptsUsed { max } => {
                format!("You have used all {max} attempts of this lab.")
            }
            Refusal::DailyLimit { max, next_at } => match next_at {
                Some(t) => format!(
                    "You have made {max} attempts in the last 24 hours, the most allowed; the next one frees up on {}.",
                    at(t)
                ),
                None => format!("You have made {max} attempts in the last 24 hours, the most allowed."),
            },
            Refusal::BudgetExhausted => "This course's GPU budget is used up (or its vouchers have expired), \
                 so no new runs can start. Runs already started will finish. Ask your instructor."
                .to_owned(),
            Refusal::StudentCap { cap_ms } => format!(
                "You have used your share of this course's GPU budget ({}). Ask your instructor to raise it.",
                crate::web::vouchers::amount(*cap_ms)
            ),
        }
    }
}

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        AppError::Refused {
            code: r.code(),
            message: r.message(),
        }
    }
}

/// Checks settings an instructor gave; the message names the setting.
pub fn check_settings(s: &LabSettings) -> Result<(), String> {
    if !(0.0..=100.0).contains(&s.late_penalty_pct) {
        return Err("late_penalty_pct: give a percentage from 0 to 100".into());
    }
    if !(0..=365).contains(&s.late_days) {
        return Err("late_days: give a number of days from 0 to 365".into());
    }
    if s.late_policy == LatePolicy::Penalty && s.late_days == 0 {
        return Err("late_days: a late penalty needs at least one day of late submissions".into());
    }
    if s.max_attempts.is_some_and(|m| !(1..=10_000).contains(&m)) {
        return Err("max_attempts: give a number from 1 to 10000, or none".into());
    }
    if s.max_per_day.is_some_and(|m| !(1..=1_000).contains(&m)) {
        return Err("max_per_day: give a number from 1 to 1000, or none".into());
    }
    if s.points
        .is_some_and(|p| !p.is_finite() || !(0.0..=10_000.0).contains(&p))
    {
        return Err("points: give a number from 0 to 10000, or none".into());
    }
    if let (Some(r), Some(d)) = (s.release_at, s.due_at) {
        if r > d {
            return Err("release_at: the lab must open before its deadline".into());
        }
    }
    Ok(())
}

/// Whether a submission at `now` is accepted, and how late it is. `due` is
/// the deadline that applies to the student (their extension, or the lab's).
pub fn lateness(s: &LabSettings, due: Option<i64>, now: i64) -> Result<Lateness, Refusal> {
    if let Some(release_at) = s.release_at {
        if now < release_at {
            return Err(Refusal::NotReleased { release_at });
        }
    }
    let Some(due_at) = due else {
        return Ok(Lateness::default());
    };
    if now <= due_at {
        return Ok(Lateness::default());
    }
    match s.late_policy {
        LatePolicy::None => Err(Refusal::PastDeadline { due_at }),
        LatePolicy::Penalty => {
            let seconds = now - due_at;
            let days = (seconds + DAY - 1) / DAY;
            if days > s.late_days {
                return Err(Refusal::LateWindowClosed {
                    closed_at: due_at + s.late_days * DAY,
                });
            }
            Ok(Lateness {
                seconds,
                days,
                penalty_pct: (days as f64 * s.late_penalty_pct).clamp(0.0, 100.0),
            })
        }
    }
}

/// The course points of a graded attempt: the lab's points scaled to the
/// course's, less the late penalty, never below zero.
pub fn course_points(
    points: f64,
    max_points: f64,
    course_max: Option<f64>,
    penalty_pct: f64,
) -> f64 {
    if max_points <= 0.0 || !points.is_finite() {
        return 0.0;
    }
    let scale = course_max.unwrap_or(max_points);
    (points / max_points * scale * (1.0 - penalty_pct / 100.0)).max(0.0)
}

/// One attempt as the gradebook sees it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub job_id: String,
    pub submitted_at: i64,
    pub state: String,
    pub points: Option<f64>,
    pub max_points: Option<f64>,
    pub penalty_pct: f64,
    pub late_seconds: i64,
}

impl Attempt {
    /// Graded, or failed through the submission's own fault (which scores 0).
    pub fn is_graded(&self) -> bool {
        self.state == "done" || self.state == "failed"
    }
    /// Counts towards the attempt limits (not gradable and cancelled do not).
    pub fn uses_an_attempt(&self) -> bool {
        !matches!(self.state.as_str(), "not_gradable" | "cancelled")
    }
    /// Course points of this attempt (0 for a failed one).
    pub fn course_points(&self, lab_max: f64, course_max: Option<f64>) -> f64 {
        match self.points {
            Some(p) => course_points(
                p,
                self.max_points.unwrap_or(lab_max),
                course_max,
                self.penalty_pct,
            ),
            None => 0.0,
        }
    }
}

/// The attempt that counts: the best or the last graded one. Ties go to the
/// earlier attempt. `attempts` may be in any order.
pub fn counted(
    attempts: &[Attempt],
    counts: Counts,
    lab_max: f64,
    course_max: Option<f64>,
) -> Option<&Attempt> {
    let graded = attempts.iter().filter(|a| a.is_graded());
    match counts {
        Counts::Last => graded.max_by_key(|a| (a.submitted_at, a.job_id.clone())),
        Counts::Best => graded.fold(None, |best: Option<&Attempt>, a| {
            let p = a.course_points(lab_max, course_max);
            match best {
                Some(b) => {
                    let bp = b.course_points(lab_max, course_max);
                    if p > bp || (p == bp && a.submitted_at < b.submitted_at) {
                        Some(a)
                    } else {
                        Some(b)
                    }
                }
                None => Some(a),
            }
        }),
    }
}

/// What a student submitted.
pub enum Content {
    Recipe(String),
    Code(String),
}

/// A stored submission and its job.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub submission_id: String,
    pub job_id: String,
    pub lateness: Lateness,
}

/// Why a submission was not stored.
#[derive(Debug)]
pub enum SubmitError {
    /// The recipe breaks the lab's schema: every problem, by parameter.
    Recipe(Vec<RecipeIssue>),
    /// Anything else, with a clear message.
    App(AppError),
}

impl From<AppError> for SubmitError {
    fn from(e: AppError) -> Self {
        SubmitError::App(e)
    }
}

impl From<sqlx::Error> for SubmitError {
    fn from(e: sqlx::Error) -> Self {
        SubmitError::App(e.into())
    }
}

impl From<SubmitError> for AppError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Recipe(issues) => AppError::Unprocessable(
                issues
                    .iter()
                    .map(|i| {
                        if i.param.is_empty() {
                            i.message.clone()
                        } else {
                            format!("{}: {}", i.param, i.message)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            SubmitError::App(e) => e,
        }
    }
}

/// Checks a submission against the lab and the course's rules and stores it
/// with its job. Staff submit outside the dates and limits (to try a lab),
/// never late. Nothing is stored when anything is wrong.
pub async fn submit(
    state: &AppState,
    offered: &CourseLab,
    entry: &CatalogEntry,
    user: &User,
    staff: bool,
    content: Content,
) -> Result<Submitted, SubmitError> {
    let (kind, text) = match content {
        Content::Recipe(t) => (SubmissionKind::Recipe, t),
        Content::Code(t) => (SubmissionKind::Code, t),
    };
    if text.len() > MAX_SUBMISSION_BYTES {
        return Err(AppError::Unprocessable(format!(
            "the submission is larger than {} KiB",
            MAX_SUBMISSION_BYTES / 1024
        ))
        .into());
    }
    if text.trim().is_empty() && kind == SubmissionKind::Code {
        return Err(AppError::Unprocessable("the source file is empty".into()).into());
    }
    let lab = &entry.lab;
    match (lab.manifest.kind, kind) {
        (LabKind::Recipe, SubmissionKind::Recipe) => {
            let schema = lab
                .schema()
                .map_err(|e| AppError::Internal(anyhow::Error::new(e)))?;
            if let Err(e) = schema.validate(&text, "recipe.toml") {
                return Err(SubmitError::Recipe(e.issues));
            }
        }
        (LabKind::Code, SubmissionKind::Code) => {}
        (LabKind::Recipe, SubmissionKind::Code) => {
            return Err(AppError::Unprocessable(
                "this is a recipe lab: send `recipe`, not `code`".into(),
            )
            .into())
        }
        (LabKind::Code, SubmissionKind::Recipe) => {
            return Err(AppError::Unprocessable(
                "this is a code lab: send `code`, not `recipe`".into(),
            )
            .into())
        }
    }
    let now = crate::db::now();
    let (lateness, limits) = if staff {
        (Lateness::default(), AttemptLimits::default())
    } else {
        let due = db_labs::due_for(&state.db, offered, &user.id).await?;
        let lateness = lateness(&offered.settings, due, now).map_err(AppError::from)?;
        let limits = AttemptLimits {
            max_total: offered.settings.max_attempts,
            max_per_day: offered.settings.max_per_day,
            gpu_cap_ms: crate::db::vouchers::student_cap(&state.db, &offered.course_id).await?,
        };
        (lateness, limits)
    };
    let new = NewSubmission {
        course_id: &offered.course_id,
        lab_id: &offered.lab_id,
        lab_version: &entry.package.version,
        lab_hash: &entry.package.hash,
        user_id: &user.id,
        kind,
        content: &text,
        resources: entry.resources(),
        step_scale: state.queue.step_scale,
        due_at_ms: offered.settings.due_at.map(|s| s * 1000),
        late_seconds: lateness.seconds,
        penalty_pct: lateness.penalty_pct,
        limits,
        regrade: None,
    };
    let (submission_id, job_id) = match jobs::submit(&state.db, &new, &state.queue.policy).await? {
        Ok(ids) => ids,
        Err(SubmitRefusal::AttemptsUsed { max }) => {
            return Err(AppError::from(Refusal::AttemptsUsed { max }).into())
        }
        Err(SubmitRefusal::DailyLimit { max, oldest_at }) => {
            return Err(AppError::from(Refusal::DailyLimit {
                max,
                next_at: oldest_at.map(|t| t + DAY),
            })
            .into())
        }
        Err(SubmitRefusal::Budget(BudgetRefusal::Exhausted)) => {
            return Err(AppError::from(Refusal::BudgetExhausted).into())
        }
        Err(SubmitRefusal::Budget(BudgetRefusal::StudentCap { cap_ms })) => {
            return Err(AppError::from(Refusal::StudentCap { cap_ms }).into())
        }
    };
    state.queue.wake();
    Ok(Submitted {
        submission_id,
        job_id,
        lateness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn penalty(pct: f64, days: i64) -> LabSettings {
        LabSettings {
            due_at: Some(1_000_000),
            late_policy: LatePolicy::Penalty,
            late_penalty_pct: pct,
            late_days: days,
            ..LabSettings::default()
        }
    }

    #[test]
    fn on_time_and_no_deadline_cost_nothing() {
        let s = penalty(10.0, 3);
        assert_eq!(
            lateness(&s, Some(1_000_000), 1_000_000),
            Ok(Lateness::default())
        );
        assert_eq!(lateness(&s, None, 5_000_000), Ok(Lateness::default()));
    }

    #[test]
    fn each_started_day_costs_the_penalty() {
        let s = penalty(10.0, 3);
        let one_second = lateness(&s, Some(1_000_000), 1_000_001).unwrap();
        assert_eq!((one_second.days, one_second.penalty_pct), (1, 10.0));
        let day_and_a_bit = lateness(&s, Some(1_000_000), 1_000_000 + DAY + 60).unwrap();
        assert_eq!((day_and_a_bit.days, day_and_a_bit.penalty_pct), (2, 20.0));
        assert_eq!(day_and_a_bit.seconds, DAY + 60);
        let last = lateness(&s, Some(1_000_000), 1_000_000 + 3 * DAY).unwrap();
        assert_eq!(last.days, 3);
        assert_eq!(
            lateness(&s, Some(1_000_000), 1_000_000 + 3 * DAY + 1),
            Err(Refusal::LateWindowClosed {
                closed_at: 1_000_000 + 3 * DAY
            })
        );
    }

    #[test]
    fn penalty_never_exceeds_everything() {
        let s = penalty(60.0, 5);
        let l = lateness(&s, Some(0), 2 * DAY).unwrap();
        assert_eq!(l.penalty_pct, 100.0);
    }

    #[test]
    fn no_late_policy_refuses_after_the_deadline() {
        let s = LabSettings {
            due_at: Some(100),
            ..LabSettings::default()
        };
        assert_eq!(
            lateness(&s, Some(100), 101),
            Err(Refusal::PastDeadline { due_at: 100 })
        );
        // An extension moves the deadline for one student.
        assert!(lateness(&s, Some(200), 150).is_ok());
    }

    #[test]
    fn unreleased_labs_refuse() {
        let s = LabSettings {
            release_at: Some(500),
            ..LabSettings::default()
        };
        assert_eq!(
            lateness(&s, None, 499),
            Err(Refusal::NotReleased { release_at: 500 })
        );
        assert!(lateness(&s, None, 500).is_ok());
    }

    #[test]
    fn course_points_scale_and_penalise() {
        assert_eq!(course_points(50.0, 100.0, None, 0.0), 50.0);
        assert_eq!(course_points(50.0, 100.0, Some(10.0), 0.0), 5.0);
        assert_eq!(course_points(80.0, 100.0, Some(10.0), 25.0), 6.0);
        assert_eq!(course_points(80.0, 100.0, None, 100.0), 0.0);
        assert_eq!(course_points(80.0, 0.0, None, 0.0), 0.0);
    }

    fn attempt(id: &str, at: i64, state: &str, points: Option<f64>, penalty: f64) -> Attempt {
        Attempt {
            job_id: id.into(),
            submitted_at: at,
            state: state.into(),
            points,
            max_points: Some(100.0),
            penalty_pct: penalty,
            late_seconds: 0,
        }
    }

    #[test]
    fn best_or_last_graded_attempt_counts() {
        let a = vec![
            attempt("a", 1, "done", Some(70.0), 0.0),
            attempt("b", 2, "done", Some(90.0), 50.0), // 45 after the penalty
            attempt("c", 3, "done", Some(60.0), 0.0),
            attempt("d", 4, "not_gradable", None, 0.0),
            attempt("e", 5, "running", None, 0.0),
        ];
        assert_eq!(counted(&a, Counts::Best, 100.0, None).unwrap().job_id, "a");
        assert_eq!(counted(&a, Counts::Last, 100.0, None).unwrap().job_id, "c");
        let failed_last = vec![
            attempt("a", 1, "done", Some(70.0), 0.0),
            attempt("b", 2, "failed", None, 0.0),
        ];
        assert_eq!(
            counted(&failed_last, Counts::Last, 100.0, None)
                .unwrap()
                .job_id,
            "b"
        );
        assert!(counted(&a[3..], Counts::Best, 100.0, None).is_none());
    }

    #[test]
    fn not_gradable_and_cancelled_attempts_are_free() {
        assert!(!attempt("x", 1, "not_gradable", None, 0.0).uses_an_attempt());
        assert!(!attempt("x", 1, "cancelled", None, 0.0).uses_an_attempt());
        assert!(attempt("x", 1, "failed", None, 0.0).uses_an_attempt());
        assert!(attempt("x", 1, "queued", None, 0.0).uses_an_attempt());
    }
}
