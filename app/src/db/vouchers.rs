//! GPU-credit vouchers and their append-only ledger.
//!
//! A site admin grants a voucher to a budget: a course, a project or an
//! organisation. Amounts are integers in milli-GPU-seconds ([`MS_PER_HOUR`]
//! to a GPU-hour), so every sum is exact. A voucher's balance is the sum of
//! its ledger rows; rows are only ever inserted.
//!
//! A job is metered in three steps, each in the transaction that changes the
//! job, so a balance can never be spent twice:
//! 1. [`hold`], in the transaction that stores the submission, reserves the
//!    most the job may use (its wall time on its GPUs, or on its CPU slots at
//!    the CPU rate), or what is left of the budget when that is less. It
//!    takes the budget's lock first: a PostgreSQL advisory lock, or on SQLite
//!    the write lock `BEGIN IMMEDIATE` already holds.
//! 2. The job runs; its runner reports the GPU- and CPU-seconds it measured.
//! 3. [`settle`], in the transaction that ends the job, releases the hold and
//!    charges the measured use, never more than was held: the budget runs
//!    out at exactly zero, and a job that runs over its hold finishes.
//!
//! Course jobs run under the course's vouchers; when none of those is valid
//! with credit left, under its university's. A course with no voucher at all
//! (nor its university) is not metered.

use sanhak_runner::protocol::Resources;
use sqlx::{FromRow, Row as _};

use super::{new_id, now, Backend, Db};

/// Milli-GPU-seconds in a GPU-hour.
pub const MS_PER_HOUR: i64 = 3_600_000;

/// What a voucher is granted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScopeKind {
    Course,
    Project,
    Org,
}

impl ScopeKind {
    pub const ALL: &'static [ScopeKind] = &[ScopeKind::Course, ScopeKind::Project, ScopeKind::Org];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Course => "course",
            ScopeKind::Project => "project",
            ScopeKind::Org => "org",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// A budget: the vouchers of one course, project or organisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: ScopeKind,
    pub id: String,
}

impl Scope {
    pub fn course(id: &str) -> Self {
        Scope {
            kind: ScopeKind::Course,
            id: id.to_owned(),
        }
    }
    pub fn org(id: &str) -> Self {
        Scope {
            kind: ScopeKind::Org,
            id: id.to_owned(),
        }
    }
    pub fn project(id: &str) -> Self {
        Scope {
            kind: ScopeKind::Project,
            id: id.to_owned(),
        }
    }
}

/// A voucher with its balance now.
#[derive(Clone, Debug, FromRow)]
pub struct Voucher {
    pub id: String,
    pub scope_kind: String,
    pub scope_id: String,
    pub amount_ms: i64,
    pub tf_label: String,
    pub valid_from: i64,
    pub valid_until: i64,
    pub source: String,
    pub granted_by: Option<String>,
    pub granted_at: i64,
    /// Sum of the ledger: what is left, less what running jobs hold.
    pub balance_ms: i64,
    /// Held by jobs that have not ended.
    pub held_ms: i64,
    /// Charged to jobs that ended.
    pub charged_ms: i64,
}

impl Voucher {
    /// Valid at `t`: new jobs may draw on it.
    pub fn is_valid_at(&self, t: i64) -> bool {
        self.valid_from <= t && t < self.valid_until
    }
}

const VOUCHER_COLUMNS: &str = "v.id, v.scope_kind, v.scope_id, v.amount_ms, v.tf_label, v.valid_from, \
     v.valid_until, v.source, v.granted_by, v.granted_at, \
     CAST(COALESCE(SUM(l.amount_ms), 0) AS BIGINT) AS balance_ms, \
     CAST(COALESCE(SUM(CASE WHEN l.kind IN ('hold', 'release') THEN -l.amount_ms ELSE 0 END), 0) AS BIGINT) AS held_ms, \
     CAST(COALESCE(SUM(CASE WHEN l.kind = 'charge' THEN -l.amount_ms ELSE 0 END), 0) AS BIGINT) AS charged_ms";

const VOUCHER_GROUP: &str =
    "GROUP BY v.id, v.scope_kind, v.scope_id, v.amount_ms, v.tf_label, v.valid_from, \
     v.valid_until, v.source, v.granted_by, v.granted_at";

/// A voucher to grant.
#[derive(Clone, Debug)]
pub struct NewVoucher<'a> {
    pub scope: &'a Scope,
    pub amount_ms: i64,
    pub tf_label: &'a str,
    pub valid_from: i64,
    pub valid_until: i64,
    pub source: &'a str,
    pub granted_by: &'a str,
}

/// Grants a voucher: the voucher and its `grant` row, in one transaction.
#[tracing::instrument(skip_all)]
pub async fn grant(db: &Db, new: &NewVoucher<'_>) -> sqlx::Result<String> {
    let id = new_id();
    let at = now();
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO vouchers (id, scope_kind, scope_id, amount_ms, tf_label, valid_from, valid_until, source, \
         granted_by, granted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(new.scope.kind.as_str())
    .bind(&new.scope.id)
    .bind(new.amount_ms)
    .bind(new.tf_label)
    .bind(new.valid_from)
    .bind(new.valid_until)
    .bind(new.source)
    .bind(new.granted_by)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    append(
        &mut tx,
        &Entry {
            voucher_id: &id,
            kind: "grant",
            amount_ms: new.amount_ms,
            note: new.source,
            created_by: Some(new.granted_by),
            at,
            ..Entry::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// One ledger row to append.
#[derive(Clone, Debug, Default)]
struct Entry<'a> {
    voucher_id: &'a str,
    kind: &'static str,
    amount_ms: i64,
    job_id: Option<&'a str>,
    course_id: Option<&'a str>,
    user_id: Option<&'a str>,
    lab_id: Option<&'a str>,
    measured_ms: Option<i64>,
    note: &'a str,
    created_by: Option<&'a str>,
    at: i64,
}

/// The only statement that writes the ledger: an insert.
async fn append(tx: &mut sqlx::Transaction<'_, sqlx::Any>, e: &Entry<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO voucher_ledger (id, voucher_id, kind, amount_ms, job_id, course_id, user_id, lab_id, \
         measured_ms, note, created_by, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(new_id())
    .bind(e.voucher_id)
    .bind(e.kind)
    .bind(e.amount_ms)
    .bind(e.job_id)
    .bind(e.course_id)
    .bind(e.user_id)
    .bind(e.lab_id)
    .bind(e.measured_ms)
    .bind(e.note)
    .bind(e.created_by)
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A stable 64-bit key for the advisory lock of one budget.
fn budget_lock_key(scope: &Scope) -> i64 {
    use sha2::{Digest as _, Sha256};
    let d = Sha256::digest(format!("budget\0{}\0{}", scope.kind.as_str(), scope.id).as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_le_bytes(b)
}

/// Serialises everything that spends a budget. PostgreSQL takes an advisory
/// lock per budget, always in the order given; on SQLite the write
/// transaction (`BEGIN IMMEDIATE`) already holds the database's write lock.
async fn lock_budgets(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    scopes: &[&Scope],
) -> sqlx::Result<()> {
    if backend == Backend::Postgres {
        for s in scopes {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(budget_lock_key(s))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Why an adjustment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdjustRefusal {
    NoSuchVoucher,
    /// It would take the balance below zero; `balance_ms` is what is left.
    BelowZero {
        balance_ms: i64,
    },
}

/// Appends an adjustment (positive adds credit, negative removes it) with
/// its reason. A negative one may not take the voucher below zero.
#[tracing::instrument(skip_all)]
pub async fn adjust(
    db: &Db,
    voucher_id: &str,
    amount_ms: i64,
    note: &str,
    by: &str,
) -> sqlx::Result<Result<(), AdjustRefusal>> {
    let mut tx = db.begin_write().await?;
    let Some(row) = sqlx::query("SELECT scope_kind, scope_id FROM vouchers WHERE id = $1")
        .bind(voucher_id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        tx.rollback().await?;
        return Ok(Err(AdjustRefusal::NoSuchVoucher));
    };
    let kind: String = row.try_get(0)?;
    let scope = Scope {
        kind: ScopeKind::parse(&kind).unwrap_or(ScopeKind::Project),
        id: row.try_get(1)?,
    };
    lock_budgets(&mut tx, db.backend, &[&scope]).await?;
    let balance = voucher_balance(&mut tx, voucher_id).await?;
    if balance + amount_ms < 0 {
        tx.rollback().await?;
        return Ok(Err(AdjustRefusal::BelowZero {
            balance_ms: balance,
        }));
    }
    append(
        &mut tx,
        &Entry {
            voucher_id,
            kind: "adjustment",
            amount_ms,
            note,
            created_by: Some(by),
            at: now(),
            ..Entry::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

async fn voucher_balance(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    voucher_id: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_ms), 0) AS BIGINT) FROM voucher_ledger WHERE voucher_id = $1",
    )
    .bind(voucher_id)
    .fetch_one(&mut **tx)
    .await
}

/// The vouchers of a budget, newest first, with their balances.
pub async fn of_scope(db: &Db, scope: &Scope) -> sqlx::Result<Vec<Voucher>> {
    sqlx::query_as(&format!(
        "SELECT {VOUCHER_COLUMNS} FROM vouchers v LEFT JOIN voucher_ledger l ON l.voucher_id = v.id \
         WHERE v.scope_kind = $1 AND v.scope_id = $2 {VOUCHER_GROUP} ORDER BY v.granted_at DESC, v.id"
    ))
    .bind(scope.kind.as_str())
    .bind(&scope.id)
    .fetch_all(&db.pool)
    .await
}

/// Every voucher, newest first (the site admin's list).
pub async fn all(db: &Db) -> sqlx::Result<Vec<Voucher>> {
    sqlx::query_as(&format!(
        "SELECT {VOUCHER_COLUMNS} FROM vouchers v LEFT JOIN voucher_ledger l ON l.voucher_id = v.id \
         {VOUCHER_GROUP} ORDER BY v.granted_at DESC, v.id"
    ))
    .fetch_all(&db.pool)
    .await
}

pub async fn by_id(db: &Db, id: &str) -> sqlx::Result<Option<Voucher>> {
    sqlx::query_as(&format!(
        "SELECT {VOUCHER_COLUMNS} FROM vouchers v LEFT JOIN voucher_ledger l ON l.voucher_id = v.id \
         WHERE v.id = $1 {VOUCHER_GROUP}"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

/// One ledger row as the dashboards and the CSV show it.
#[derive(Clone, Debug, FromRow)]
pub struct LedgerRow {
    pub id: String,
    pub at: i64,
    pub voucher_id: String,
    pub source: String,
    pub kind: String,
    pub amount_ms: i64,
    pub job_id: Option<String>,
    pub course_id: Option<String>,
    pub course_code: Option<String>,
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
    pub lab_id: Option<String>,
    pub measured_ms: Option<i64>,
    pub note: String,
    pub created_by_email: Option<String>,
}

/// The ledger of a budget, oldest first: every row of its vouchers, and for
/// a course also the rows of its jobs that ran under its university's.
pub async fn ledger(db: &Db, scope: &Scope) -> sqlx::Result<Vec<LedgerRow>> {
    let course = (scope.kind == ScopeKind::Course).then_some(scope.id.as_str());
    sqlx::query_as(
        "SELECT l.id, l.at, l.voucher_id, v.source, l.kind, l.amount_ms, l.job_id, l.course_id, \
         c.code AS course_code, l.user_id, u.email AS user_email, u.display_name AS user_name, l.lab_id, \
         l.measured_ms, l.note, b.email AS created_by_email \
         FROM voucher_ledger l JOIN vouchers v ON v.id = l.voucher_id \
         LEFT JOIN courses c ON c.id = l.course_id \
         LEFT JOIN users u ON u.id = l.user_id \
         LEFT JOIN users b ON b.id = l.created_by \
         WHERE (v.scope_kind = $1 AND v.scope_id = $2) OR l.course_id = $3 \
         ORDER BY l.at, l.id",
    )
    .bind(scope.kind.as_str())
    .bind(&scope.id)
    .bind(course)
    .fetch_all(&db.pool)
    .await
}

/// The instructor's cap on what one student may use of the course's budget.
pub async fn student_cap(db: &Db, course_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT cap_ms FROM course_gpu_caps WHERE course_id = $1")
        .bind(course_id)
        .fetch_optional(&db.pool)
        .await
}

/// Sets (`Some`) or removes (`None`) the per-student cap of a course.
pub async fn set_student_cap(
    db: &Db,
    course_id: &str,
    cap_ms: Option<i64>,
    by: &str,
) -> sqlx::Result<()> {
    match cap_ms {
        Some(cap) => {
            sqlx::query(
                "INSERT INTO course_gpu_caps (course_id, cap_ms, set_by, set_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (course_id) DO UPDATE SET cap_ms = excluded.cap_ms, set_by = excluded.set_by, \
                 set_at = excluded.set_at",
            )
            .bind(course_id)
            .bind(cap)
            .bind(by)
            .bind(now())
            .execute(&db.pool)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM course_gpu_caps WHERE course_id = $1")
                .bind(course_id)
                .execute(&db.pool)
                .await?;
        }
    }
    Ok(())
}

/// What a student has used of a course's budgets: charges plus what their
/// running jobs hold.
const STUDENT_USED: &str =
    "SELECT CAST(COALESCE(-SUM(amount_ms), 0) AS BIGINT) FROM voucher_ledger \
     WHERE course_id = $1 AND user_id = $2 AND kind IN ('hold', 'release', 'charge')";

pub async fn student_used(db: &Db, course_id: &str, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(STUDENT_USED)
        .bind(course_id)
        .bind(user_id)
        .fetch_one(&db.pool)
        .await
}

/// Vouchers of a budget valid at `t` with credit left, soonest to expire
/// first (so credit that would lapse is spent first): `(id, balance)`.
async fn spendable(
    conn: &mut sqlx::AnyConnection,
    scope: &Scope,
    t: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT v.id, CAST(COALESCE(SUM(l.amount_ms), 0) AS BIGINT) AS balance \
         FROM vouchers v LEFT JOIN voucher_ledger l ON l.voucher_id = v.id \
         WHERE v.scope_kind = $1 AND v.scope_id = $2 AND v.valid_from <= $3 AND v.valid_until > $3 \
         GROUP BY v.id, v.valid_until ORDER BY v.valid_until, v.id",
    )
    .bind(scope.kind.as_str())
    .bind(&scope.id)
    .bind(t)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let balance: i64 = r.try_get(1)?;
        if balance > 0 {
            out.push((r.try_get(0)?, balance));
        }
    }
    Ok(out)
}

async fn has_vouchers(conn: &mut sqlx::AnyConnection, scope: &Scope) -> sqlx::Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM vouchers WHERE scope_kind = $1 AND scope_id = $2")
            .bind(scope.kind.as_str())
            .bind(&scope.id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(n > 0)
}

async fn university_of(conn: &mut sqlx::AnyConnection, course_id: &str) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT university_id FROM courses WHERE id = $1")
        .bind(course_id)
        .fetch_one(&mut *conn)
        .await
}

/// The budget a course's new jobs run under now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CourseBudget {
    /// Neither the course nor its university has a voucher: not metered.
    Unmetered,
    /// Metered, with this much left for new jobs (0: used up or expired).
    Metered {
        /// The budget that pays: the course's, or its university's.
        scope: Option<Scope>,
        available_ms: i64,
        /// The soonest-expiring vouchers it would draw on: `(id, balance)`.
        vouchers: Vec<(String, i64)>,
    },
}

async fn course_budget_in(
    conn: &mut sqlx::AnyConnection,
    course_id: &str,
    t: i64,
) -> sqlx::Result<CourseBudget> {
    let course = Scope::course(course_id);
    let org = Scope::org(&university_of(conn, course_id).await?);
    for scope in [&course, &org] {
        let vouchers = spendable(conn, scope, t).await?;
        if !vouchers.is_empty() {
            return Ok(CourseBudget::Metered {
                scope: Some(scope.clone()),
                available_ms: vouchers.iter().map(|v| v.1).sum(),
                vouchers,
            });
        }
    }
    if has_vouchers(conn, &course).await? || has_vouchers(conn, &org).await? {
        return Ok(CourseBudget::Metered {
            scope: None,
            available_ms: 0,
            vouchers: Vec::new(),
        });
    }
    Ok(CourseBudget::Unmetered)
}

/// The budget a course's new jobs would run under now (for pages).
pub async fn course_budget(db: &Db, course_id: &str) -> sqlx::Result<CourseBudget> {
    let mut conn = db.pool.acquire().await?;
    course_budget_in(&mut conn, course_id, now()).await
}

/// The most a job may use, in milli-GPU-seconds: its wall time on each of
/// its GPUs, or for a CPU job on each CPU slot at `cpu_rate` GPU-seconds per
/// CPU-second.
pub fn hold_bound_ms(r: &Resources, cpu_rate: f64) -> i64 {
    let wall = r.wall_seconds as f64;
    let gpu_s = if r.gpu_count > 0 {
        wall * f64::from(r.gpu_count)
    } else {
        wall * f64::from(r.cpu_slots.max(1)) * cpu_rate
    };
    to_ms(gpu_s)
}

/// What a job used, in milli-GPU-seconds: its GPU-seconds, or for a CPU job
/// its CPU-seconds at `cpu_rate`.
pub fn measured_ms(gpu_count: i64, gpu_seconds: f64, cpu_seconds: f64, cpu_rate: f64) -> i64 {
    if gpu_count > 0 {
        to_ms(gpu_seconds)
    } else {
        to_ms(cpu_seconds * cpu_rate)
    }
}

/// GPU-seconds to whole milli-GPU-seconds (negative and non-finite: 0).
pub fn to_ms(gpu_seconds: f64) -> i64 {
    if gpu_seconds.is_finite() && gpu_seconds > 0.0 {
        (gpu_seconds * 1000.0).round().min(i64::MAX as f64 / 2.0) as i64
    } else {
        0
    }
}

/// A job about to be stored, as the hold needs it.
#[derive(Clone, Debug)]
pub struct HoldJob<'a> {
    pub job_id: &'a str,
    pub course_id: &'a str,
    pub user_id: &'a str,
    pub lab_id: &'a str,
    pub bound_ms: i64,
    /// The student's cap (`None`: staff, regrades, or no cap).
    pub cap_ms: Option<i64>,
    /// Regrades are never refused: they hold what is left, if anything.
    pub refusable: bool,
}

/// Why a budget refused a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// The budget is used up, or its vouchers expired.
    Exhausted,
    /// The student used their cap.
    StudentCap { cap_ms: i64 },
}

/// Holds what a job may use, inside the transaction that stores it. Returns
/// the refusal when the budget (or the student's cap) has nothing left; the
/// caller then rolls back.
#[tracing::instrument(skip_all)]
pub async fn hold(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    job: &HoldJob<'_>,
) -> sqlx::Result<Result<i64, BudgetRefusal>> {
    if job.bound_ms <= 0 {
        // Nothing to meter (a CPU job at a CPU rate of 0).
        return Ok(Ok(0));
    }
    let course = Scope::course(job.course_id);
    let org = Scope::org(&university_of(tx, job.course_id).await?);
    lock_budgets(tx, backend, &[&course, &org]).await?;
    let t = now();
    let CourseBudget::Metered { vouchers, .. } = course_budget_in(tx, job.course_id, t).await?
    else {
        return Ok(Ok(0));
    };
    let mut want = job.bound_ms;
    if let Some(cap) = job.cap_ms {
        let used: i64 = sqlx::query_scalar(STUDENT_USED)
            .bind(job.course_id)
            .bind(job.user_id)
            .fetch_one(&mut **tx)
            .await?;
        if used >= cap && job.refusable {
            return Ok(Err(BudgetRefusal::StudentCap { cap_ms: cap }));
        }
        want = want.min((cap - used).max(0));
    }
    if vouchers.is_empty() && job.refusable {
        return Ok(Err(BudgetRefusal::Exhausted));
    }
    let mut held = 0;
    for (voucher_id, balance) in &vouchers {
        let take = (*balance).min(want - held);
        if take <= 0 {
            break;
        }
        append(
            tx,
            &Entry {
                voucher_id,
                kind: "hold",
                amount_ms: -take,
                job_id: Some(job.job_id),
                course_id: Some(job.course_id),
                user_id: Some(job.user_id),
                lab_id: Some(job.lab_id),
                at: t,
                ..Entry::default()
            },
        )
        .await?;
        held += take;
    }
    Ok(Ok(held))
}

/// Ends a job's hold inside the transaction that ends the job: each hold is
/// released and the measured use charged against the same vouchers, in
/// order, up to what was held. Does nothing for a job without holds or one
/// already settled.
#[tracing::instrument(skip_all)]
pub async fn settle(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    measured_ms: i64,
) -> sqlx::Result<()> {
    // The holds still to settle: none once a release is recorded.
    let holds = sqlx::query(
        "SELECT voucher_id, amount_ms, course_id, user_id, lab_id FROM voucher_ledger h \
         WHERE h.job_id = $1 AND h.kind = 'hold' AND NOT EXISTS \
           (SELECT 1 FROM voucher_ledger r WHERE r.job_id = $1 AND r.kind = 'release') \
         ORDER BY h.at, h.id",
    )
    .bind(job_id)
    .fetch_all(&mut **tx)
    .await?;
    let t = now();
    let mut left = measured_ms.max(0);
    let mut first = true;
    for h in &holds {
        let voucher_id: String = h.try_get(0)?;
        let held: i64 = -h.try_get::<i64, _>(1)?;
        let course_id: Option<String> = h.try_get(2)?;
        let user_id: Option<String> = h.try_get(3)?;
        let lab_id: Option<String> = h.try_get(4)?;
        let base = Entry {
            voucher_id: &voucher_id,
            job_id: Some(job_id),
            course_id: course_id.as_deref(),
            user_id: user_id.as_deref(),
            lab_id: lab_id.as_deref(),
            at: t,
            ..Entry::default()
        };
        append(
            tx,
            &Entry {
                kind: "release",
                amount_ms: held,
                ..base.clone()
            },
        )
        .await?;
        let charge = held.min(left);
        left -= charge;
        if charge > 0 || first {
            append(
                tx,
                &Entry {
                    kind: "charge",
                    amount_ms: -charge,
                    measured_ms: first.then_some(measured_ms),
                    ..base
                },
            )
            .await?;
        }
        first = false;
    }
    Ok(())
}

/// Settles the holds of jobs that ended without settling them (a regrade
/// discarded, a job the reaper gave up on, a course deleted): called by the
/// reaper. A job that no longer exists is charged nothing.
#[tracing::instrument(skip_all)]
pub async fn settle_finished(db: &Db, cpu_rate: f64) -> sqlx::Result<u64> {
    let rows = sqlx::query(
        "SELECT DISTINCT l.job_id, j.gpu_count, j.gpu_seconds, j.cpu_seconds FROM voucher_ledger l \
         LEFT JOIN jobs j ON j.id = l.job_id \
         WHERE l.kind = 'hold' \
         AND (j.id IS NULL OR j.state IN ('done', 'failed', 'not_gradable', 'cancelled')) \
         AND NOT EXISTS (SELECT 1 FROM voucher_ledger r WHERE r.job_id = l.job_id AND r.kind = 'release')",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut n = 0;
    for r in rows {
        let job_id: String = r.try_get(0)?;
        let gpu_count: Option<i64> = r.try_get(1)?;
        let gpu_seconds: Option<f64> = r.try_get(2)?;
        let cpu_seconds: Option<f64> = r.try_get(3)?;
        let measured = match (gpu_count, gpu_seconds, cpu_seconds) {
            (Some(g), Some(gs), Some(cs)) => measured_ms(g, gs, cs, cpu_rate),
            _ => 0,
        };
        let mut tx = db.begin_write().await?;
        settle(&mut tx, &job_id, measured).await?;
        tx.commit().await?;
        n += 1;
    }
    Ok(n)
}

/// `sanhak demo`: one voucher for the demo course, unless it has one.
pub async fn seed_demo(db: &Db, course_id: &str, admin_id: &str) -> sqlx::Result<()> {
    let scope = Scope::course(course_id);
    if !of_scope(db, &scope).await?.is_empty() {
        return Ok(());
    }
    let start = now() - now().rem_euclid(86_400);
    grant(
        db,
        &NewVoucher {
            scope: &scope,
            amount_ms: 10 * MS_PER_HOUR,
            tf_label: "160 TF",
            valid_from: start,
            valid_until: start + 120 * 86_400,
            source: "AI compute voucher programme (demo)",
            granted_by: admin_id,
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: u32, gpus: u32, wall: u64) -> Resources {
        Resources {
            cpu_slots: cpu,
            gpu_count: gpus,
            gpu_memory_mb: 0,
            wall_seconds: wall,
            memory_mb: 0,
        }
    }

    #[test]
    fn holds_cover_the_worst_case() {
        assert_eq!(hold_bound_ms(&res(2, 1, 300), 0.5), 300_000);
        assert_eq!(hold_bound_ms(&res(2, 2, 300), 0.5), 600_000);
        assert_eq!(hold_bound_ms(&res(2, 0, 300), 0.5), 300_000);
        assert_eq!(hold_bound_ms(&res(2, 0, 300), 0.0), 0);
    }

    #[test]
    fn measured_use_is_whole_milliseconds() {
        assert_eq!(measured_ms(1, 12.3456, 99.0, 0.5), 12_346);
        assert_eq!(measured_ms(0, 0.0, 123.456, 0.5), 61_728);
        assert_eq!(measured_ms(0, 0.0, f64::NAN, 0.5), 0);
        assert_eq!(measured_ms(0, 0.0, -5.0, 0.5), 0);
    }
}
