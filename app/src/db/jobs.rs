//! The job queue: submissions waiting for a runner, leases, heartbeats and the
//! single recorded result of each job.
//!
//! States: `queued → leased → running → grading → done | failed |
//! not_gradable | cancelled`. A claim is a lease: a random token plus an
//! expiry that heartbeats renew. Every report must carry the live lease, so a
//! runner whose lease expired (and whose job went back on the queue) is
//! refused, and a job is graded exactly once.
//!
//! The claim is the one place where the two backends differ:
//! - PostgreSQL ranks a bounded candidate set (the oldest eligible jobs of
//!   each course plus every job due soon, found through indexes), locks the
//!   best one no other runner holds with `FOR UPDATE SKIP LOCKED`, takes an
//!   advisory lock on the student and course, and re-checks the per-student
//!   limit with a fresh snapshot, so concurrent runners never block each
//!   other and never break the limit. These steps run inside the database as
//!   one function call, `sanhak_claim` ([`pg_claim_function`], installed by
//!   [`Db::migrate`](super::Db::migrate)): one round trip per claim instead
//!   of six;
//! - SQLite claims with a single `UPDATE … RETURNING`, which holds the write
//!   lock for the whole statement.

use sanhak_runner::protocol::{self, Resources};
use sqlx::{FromRow, Row as _};

use super::{new_id, vouchers, Backend, Db};

/// States in which a job holds a lease.
pub const ACTIVE: &str = "('leased', 'running', 'grading')";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Queue policy (from the app's configuration).
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// A claim leases a job for this long; heartbeats renew it.
    pub lease_ms: i64,
    /// Tries before a job whose runners keep vanishing becomes not gradable.
    pub max_attempts: i64,
    /// Jobs holding a lease per student per course.
    pub max_running_per_student: i64,
    /// Jobs of a lab due within this window go first.
    pub deadline_window_ms: i64,
    /// Half-life (hyperbolic) of a course's recorded usage, for fair share.
    pub usage_half_life_ms: i64,
    /// Seconds of usage each job in flight counts as, so courses take turns.
    pub in_flight_weight_s: f64,
    /// Events stored per job; later ones are counted and dropped.
    pub max_events_per_job: i64,
    /// GPU-seconds a CPU-only job is charged per CPU-second it uses (see
    /// `db::vouchers`).
    pub cpu_rate: f64,
}

/// Default GPU-seconds charged per CPU-second: 50 CPU-seconds make one GPU-second.
pub const DEFAULT_CPU_RATE: f64 = 0.02;

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            max_attempts: 3,
            max_running_per_student: 1,
            deadline_window_ms: 6 * 3_600_000,
            usage_half_life_ms: 3_600_000,
            in_flight_weight_s: 60.0,
            max_events_per_job: 5_000,
            cpu_rate: DEFAULT_CPU_RATE,
        }
    }
}

/// A new submission and the job that runs it.
#[derive(Debug, Clone)]
pub struct NewSubmission<'a> {
    pub course_id: &'a str,
    pub lab_id: &'a str,
    pub lab_version: &'a str,
    pub lab_hash: &'a str,
    pub user_id: &'a str,
    pub kind: protocol::SubmissionKind,
    pub content: &'a str,
    pub resources: Resources,
    pub step_scale: f64,
    pub due_at_ms: Option<i64>,
    /// Seconds after the student's deadline (0: on time).
    pub late_seconds: i64,
    /// Late penalty in percent.
    pub penalty_pct: f64,
    pub limits: AttemptLimits,
    /// A regrade's copy of a submission (never an attempt of the student).
    pub regrade: Option<RegradeOf<'a>>,
}

/// Which regrade a submission belongs to, and the submission it regrades.
#[derive(Debug, Clone, Copy)]
pub struct RegradeOf<'a> {
    pub regrade_id: &'a str,
    pub original_id: &'a str,
}

/// Attempt limits checked in the same transaction that stores a submission,
/// so two submissions at once cannot both take the last attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptLimits {
    pub max_total: Option<i64>,
    pub max_per_day: Option<i64>,
    /// The student's cap on the course's GPU budget, in milli-GPU-seconds.
    pub gpu_cap_ms: Option<i64>,
}

/// A submission the attempt limits refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitRefusal {
    AttemptsUsed {
        max: i64,
    },
    /// `oldest_at`: when the oldest attempt of the last 24 hours was made.
    DailyLimit {
        max: i64,
        oldest_at: Option<i64>,
    },
    /// The GPU budget (or the student's cap on it) has nothing left.
    Budget(vouchers::BudgetRefusal),
}

/// Attempts of a student in a lab that count towards the limits, with the
/// placeholders that carry the course, the lab and the student.
fn counted_attempts(course: &str, lab: &str, user: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM submissions s JOIN jobs j ON j.submission_id = s.id \
         WHERE s.course_id = {course} AND s.lab_id = {lab} AND s.user_id = {user} \
         AND s.regrade_of IS NULL AND j.state NOT IN ('not_gradable', 'cancelled')"
    )
}

/// A stable 64-bit key for the advisory lock of one student's submissions to one lab.
fn submit_lock_key(user_id: &str, course_id: &str, lab_id: &str) -> i64 {
    use sha2::{Digest as _, Sha256};
    let d = Sha256::digest(format!("submit\0{course_id}\0{lab_id}\0{user_id}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_le_bytes(b)
}

/// Stores a submission and enqueues its job, in one transaction, unless the
/// attempt limits refuse it. Returns `(submission_id, job_id)`.
#[tracing::instrument(skip_all)]
pub async fn submit(
    db: &Db,
    new: &NewSubmission<'_>,
    policy: &QueuePolicy,
) -> sqlx::Result<Result<(String, String), SubmitRefusal>> {
    let submission_id = new_id();
    let job_id = new_id();
    let now = now_ms();
    let day_start = now / 1000 - 86_400;
    let mut tx = db.begin_write().await?;
    if db.backend == Backend::Postgres {
        // Serialise one student's submissions to one lab, so the counts below
        // see every committed attempt. (On SQLite the INSERT below takes the
        // write lock before it reads.)
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(submit_lock_key(new.user_id, new.course_id, new.lab_id))
            .execute(&mut *tx)
            .await?;
    }
    let counted = counted_attempts("$2", "$3", "$6");
    let inserted = sqlx::query(&format!(
        "INSERT INTO submissions (id, course_id, lab_id, lab_version, lab_hash, user_id, kind, content, \
         content_hash, created_at, late_seconds, penalty_pct, regrade_id, regrade_of) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $16, $17 \
         WHERE ({counted}) < $13 AND ({counted} AND s.created_at > $14) < $15"
    ))
    .bind(&submission_id)
    .bind(new.course_id)
    .bind(new.lab_id)
    .bind(new.lab_version)
    .bind(new.lab_hash)
    .bind(new.user_id)
    .bind(new.kind.as_str())
    .bind(new.content)
    .bind(protocol::sha256_hex(new.content.as_bytes()))
    .bind(now / 1000)
    .bind(new.late_seconds)
    .bind(new.penalty_pct)
    .bind(new.limits.max_total.unwrap_or(i64::MAX))
    .bind(day_start)
    .bind(new.limits.max_per_day.unwrap_or(i64::MAX))
    .bind(new.regrade.map(|r| r.regrade_id))
    .bind(new.regrade.map(|r| r.original_id))
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        let total: i64 = sqlx::query_scalar(&counted_attempts("$1", "$2", "$3"))
            .bind(new.course_id)
            .bind(new.lab_id)
            .bind(new.user_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.rollback().await?;
        if let Some(max) = new.limits.max_total.filter(|m| total >= *m) {
            return Ok(Err(SubmitRefusal::AttemptsUsed { max }));
        }
        let oldest_at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(s.created_at) FROM submissions s JOIN jobs j ON j.submission_id = s.id \
             WHERE s.course_id = $1 AND s.lab_id = $2 AND s.user_id = $3 AND s.regrade_of IS NULL \
             AND j.state NOT IN ('not_gradable', 'cancelled') AND s.created_at > $4",
        )
        .bind(new.course_id)
        .bind(new.lab_id)
        .bind(new.user_id)
        .bind(day_start)
        .fetch_one(&db.pool)
        .await?;
        return Ok(Err(SubmitRefusal::DailyLimit {
            max: new.limits.max_per_day.unwrap_or(0),
            oldest_at,
        }));
    }
    let r = &new.resources;
    sqlx::query(
        "INSERT INTO jobs (id, submission_id, course_id, user_id, lab_id, state, max_attempts, cpu_slots, gpu_count, \
         gpu_memory_mb, memory_mb, wall_seconds, step_scale, due_at_ms, enqueued_ms) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&job_id)
    .bind(&submission_id)
    .bind(new.course_id)
    .bind(new.user_id)
    .bind(new.lab_id)
    .bind(policy.max_attempts)
    .bind(i64::from(r.cpu_slots))
    .bind(i64::from(r.gpu_count))
    .bind(r.gpu_memory_mb as i64)
    .bind(r.memory_mb as i64)
    .bind(r.wall_seconds as i64)
    .bind(new.step_scale)
    .bind(new.due_at_ms)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // The GPU budget holds what the job may use, in this same transaction,
    // so two submissions cannot both take the last credit.
    let held = vouchers::hold(
        &mut tx,
        db.backend,
        &vouchers::HoldJob {
            job_id: &job_id,
            course_id: new.course_id,
            user_id: new.user_id,
            lab_id: new.lab_id,
            bound_ms: vouchers::hold_bound_ms(&new.resources, policy.cpu_rate),
            cap_ms: new.limits.gpu_cap_ms,
            refusable: new.regrade.is_none(),
        },
    )
    .await?;
    if let Err(refusal) = held {
        tx.rollback().await?;
        return Ok(Err(SubmitRefusal::Budget(refusal)));
    }
    // Every course with jobs has a usage row: fair share ranks courses by it.
    sqlx::query(
        "INSERT INTO course_usage (course_id, seconds, updated_ms) VALUES ($1, 0, $2) \
         ON CONFLICT (course_id) DO NOTHING",
    )
    .bind(new.course_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok((submission_id, job_id)))
}

/// The free capacity a runner reports with a claim.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub free_cpu_slots: u32,
    pub free_gpu_memory_mb: Vec<u64>,
}

/// Largest number of GPUs one job may ask for.
pub const MAX_GPUS_PER_JOB: usize = 8;

impl Capacity {
    /// `k`-th largest free GPU memory (1-based), or -1 when there is no such GPU:
    /// a job that needs `k` GPUs of `m` MB fits when this is at least `m`.
    fn kth_free(&self, k: usize) -> i64 {
        let mut free = self.free_gpu_memory_mb.clone();
        free.sort_unstable_by(|a, b| b.cmp(a));
        free.get(k - 1).map(|&m| m as i64).unwrap_or(-1)
    }
}

/// The candidate query: queued jobs that fit the capacity, whose student is
/// under the running limit, best first: labs due soon, then the course with
/// the least recent usage (decayed) plus work in flight, then the oldest.
/// Parameters: $1 now, $2 free CPU slots, $3..$10 the k-th free GPU memory,
/// $11 max running per student, $12 deadline window, $13 usage half-life,
/// $14 in-flight weight.
const CANDIDATES: &str = "\
WITH active AS (
    SELECT course_id, user_id, COUNT(*) AS n FROM jobs WHERE state IN ('leased', 'running', 'grading')
    GROUP BY course_id, user_id
), load AS (
    SELECT course_id, SUM(n) AS n FROM active GROUP BY course_id
)
SELECT j.id, j.user_id, j.course_id FROM jobs j
LEFT JOIN active a ON a.course_id = j.course_id AND a.user_id = j.user_id
LEFT JOIN load l ON l.course_id = j.course_id
LEFT JOIN course_usage u ON u.course_id = j.course_id
WHERE j.state = 'queued'
  AND j.cpu_slots <= $2
  AND (j.gpu_count = 0 OR j.gpu_memory_mb <= CASE j.gpu_count
        WHEN 1 THEN $3 WHEN 2 THEN $4 WHEN 3 THEN $5 WHEN 4 THEN $6
        WHEN 5 THEN $7 WHEN 6 THEN $8 WHEN 7 THEN $9 WHEN 8 THEN $10 ELSE -1 END)
  AND COALESCE(a.n, 0) < $11
ORDER BY
  CASE WHEN j.due_at_ms IS NOT NULL AND j.due_at_ms <= $1 + $12 THEN 0 ELSE 1 END,
  COALESCE(u.seconds * $13 / ($13 + ($1 - u.updated_ms)), 0) + COALESCE(l.n, 0) * $14,
  j.enqueued_ms, j.id
LIMIT 1";

/// The same order on PostgreSQL, without sorting the whole queue or counting
/// every running job: each course that has jobs contributes its oldest
/// eligible few (an index scan per course), plus every job due within the
/// window; running jobs are counted only for those candidates' students and
/// courses (through indexes); only those candidates are ranked, best first.
/// [`pg_claim_function`] locks the first one no other runner holds.
const PG_CANDIDATES: &str = "\
WITH cand AS (
    SELECT w.id, w.user_id, w.course_id, w.due_at_ms, w.enqueued_ms FROM course_usage cu
    CROSS JOIN LATERAL (
        SELECT j.id, j.user_id, j.course_id, j.due_at_ms, j.enqueued_ms FROM jobs j
        WHERE j.course_id = cu.course_id AND j.state = 'queued' AND j.cpu_slots <= $2
          AND (j.gpu_count = 0 OR j.gpu_memory_mb <= CASE j.gpu_count
                WHEN 1 THEN $3 WHEN 2 THEN $4 WHEN 3 THEN $5 WHEN 4 THEN $6
                WHEN 5 THEN $7 WHEN 6 THEN $8 WHEN 7 THEN $9 WHEN 8 THEN $10 ELSE -1 END)
          AND (SELECT COUNT(*) FROM jobs r WHERE r.user_id = j.user_id AND r.course_id = j.course_id
               AND r.state IN ('leased', 'running', 'grading')) < $11
        ORDER BY j.enqueued_ms, j.id LIMIT 8
    ) w
    UNION
    SELECT j.id, j.user_id, j.course_id, j.due_at_ms, j.enqueued_ms FROM jobs j
    WHERE j.state = 'queued' AND j.due_at_ms <= $1 + $12 AND j.cpu_slots <= $2
      AND (j.gpu_count = 0 OR j.gpu_memory_mb <= CASE j.gpu_count
            WHEN 1 THEN $3 WHEN 2 THEN $4 WHEN 3 THEN $5 WHEN 4 THEN $6
            WHEN 5 THEN $7 WHEN 6 THEN $8 WHEN 7 THEN $9 WHEN 8 THEN $10 ELSE -1 END)
      AND (SELECT COUNT(*) FROM jobs r WHERE r.user_id = j.user_id AND r.course_id = j.course_id
           AND r.state IN ('leased', 'running', 'grading')) < $11
), load AS (
    SELECT cc.course_id, (SELECT COUNT(*) FROM jobs x WHERE x.course_id = cc.course_id
                          AND x.state IN ('leased', 'running', 'grading')) AS n
    FROM (SELECT DISTINCT course_id FROM cand) cc
), ranked AS (
    SELECT c.id, c.user_id, c.course_id, c.enqueued_ms,
      CASE WHEN c.due_at_ms IS NOT NULL AND c.due_at_ms <= $1 + $12 THEN 0 ELSE 1 END AS urgency,
      COALESCE(u.seconds * $13 / ($13 + ($1 - u.updated_ms)), 0) + COALESCE(l.n, 0) * $14 AS share
    FROM cand c
    LEFT JOIN load l ON l.course_id = c.course_id
    LEFT JOIN course_usage u ON u.course_id = c.course_id
)
SELECT r.id, r.user_id, r.course_id FROM ranked r
ORDER BY r.urgency, r.share, r.enqueued_ms, r.id";

/// The PostgreSQL claim as a PL/pgSQL function (SQLite has none; its claim
/// is one statement). Its parameters are those of [`PG_CANDIDATES`] ($1–$14,
/// which the query text uses as they are), then the runner id, the new lease
/// and its expiry.
/// - It walks the ranked candidates and locks the first that is still queued
///   and that no other runner holds (`FOR UPDATE SKIP LOCKED` on its primary
///   key), so it never waits on another claim.
/// - It then takes the advisory lock of that student in that course and
///   counts the student's running jobs. Each statement of a volatile function
///   sees what committed before it began, so that count is fresh.
/// - When another claim of the same student won the race, the next round's
///   candidates no longer include that student's jobs.
/// - The claim commits without waiting for its WAL flush
///   (`synchronous_commit` off for this transaction only). A claim lost to a
///   database crash leaves the job queued, and the runner that thought it
///   held the job is refused at its first heartbeat or report (the lease no
///   longer matches), so nothing is graded twice or lost. Results, failures
///   and submissions still commit durably.
pub fn pg_claim_function() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION sanhak_claim(
    BIGINT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT,
    BIGINT, BIGINT, BIGINT, DOUBLE PRECISION, TEXT, TEXT, BIGINT)
RETURNS SETOF jobs LANGUAGE plpgsql VOLATILE AS $claim$
DECLARE
    pick RECORD;
    locked BOOLEAN;
    running BIGINT;
    claimed jobs%ROWTYPE;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR attempt_no IN 1..8 LOOP
        locked := FALSE;
        FOR pick IN {PG_CANDIDATES}
        LOOP
            PERFORM 1 FROM jobs WHERE id = pick.id AND state = 'queued' FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                locked := TRUE;
                EXIT;
            END IF;
        END LOOP;
        IF NOT locked THEN
            RETURN;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended(pick.course_id || chr(1) || pick.user_id, 0));
        SELECT COUNT(*) INTO running FROM jobs
            WHERE user_id = pick.user_id AND course_id = pick.course_id
              AND state IN ('leased', 'running', 'grading');
        IF running < $11 THEN
            UPDATE jobs SET state = 'leased', attempts = attempts + 1, runner_id = $15,
                lease = $16, lease_expires_ms = $17
                WHERE id = pick.id RETURNING * INTO claimed;
            RETURN NEXT claimed;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END
$claim$"
    )
}

/// Columns of a claimed job.
const CLAIMED_COLUMNS: &str = "id, submission_id, lab_id, attempts, lease, cpu_slots, gpu_count, \
     gpu_memory_mb, memory_mb, wall_seconds, step_scale";

#[derive(Debug, Clone, FromRow)]
struct ClaimedRow {
    id: String,
    submission_id: String,
    lab_id: String,
    attempts: i64,
    lease: Option<String>,
    cpu_slots: i64,
    gpu_count: i64,
    gpu_memory_mb: i64,
    memory_mb: i64,
    wall_seconds: i64,
    step_scale: f64,
}

/// A job handed to a runner.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job_id: String,
    pub submission_id: String,
    pub lab_id: String,
    pub attempt: u32,
    pub lease: String,
    pub resources: Resources,
    pub step_scale: f64,
}

impl From<ClaimedRow> for Claimed {
    fn from(r: ClaimedRow) -> Self {
        Claimed {
            job_id: r.id,
            submission_id: r.submission_id,
            lab_id: r.lab_id,
            attempt: r.attempts.max(0) as u32,
            lease: r.lease.unwrap_or_default(),
            resources: Resources {
                cpu_slots: r.cpu_slots.max(0) as u32,
                gpu_count: r.gpu_count.max(0) as u32,
                gpu_memory_mb: r.gpu_memory_mb.max(0) as u64,
                wall_seconds: r.wall_seconds.max(0) as u64,
                memory_mb: r.memory_mb.max(0) as u64,
            },
            step_scale: r.step_scale,
        }
    }
}

fn bind_candidates<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    now: i64,
    cap: &Capacity,
    policy: &QueuePolicy,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q = q.bind(now).bind(i64::from(cap.free_cpu_slots));
    for k in 1..=MAX_GPUS_PER_JOB {
        q = q.bind(cap.kth_free(k));
    }
    q.bind(policy.max_running_per_student)
        .bind(policy.deadline_window_ms)
        .bind(policy.usage_half_life_ms)
        .bind(policy.in_flight_weight_s)
}

/// Claims the best job that fits, leasing it to `runner_id`.
#[tracing::instrument(skip_all)]
pub async fn claim(
    db: &Db,
    runner_id: &str,
    cap: &Capacity,
    policy: &QueuePolicy,
) -> sqlx::Result<Option<Claimed>> {
    match db.backend {
        Backend::Sqlite => claim_sqlite(db, runner_id, cap, policy).await,
        Backend::Postgres => claim_postgres(db, runner_id, cap, policy).await,
    }
}

async fn claim_sqlite(
    db: &Db,
    runner_id: &str,
    cap: &Capacity,
    policy: &QueuePolicy,
) -> sqlx::Result<Option<Claimed>> {
    let now = now_ms();
    let sql = format!(
        "UPDATE jobs SET state = 'leased', attempts = attempts + 1, runner_id = $15, lease = $16, \
         lease_expires_ms = $17 WHERE id = (SELECT id FROM ({CANDIDATES}) best) AND state = 'queued' \
         RETURNING {CLAIMED_COLUMNS}"
    );
    let q = bind_candidates(sqlx::query(&sql), now, cap, policy)
        .bind(runner_id)
        .bind(new_id())
        .bind(now + policy.lease_ms);
    let row = q.fetch_optional(&db.pool).await?;
    row.map(|r| ClaimedRow::from_row(&r).map(Claimed::from))
        .transpose()
}

async fn claim_postgres(
    db: &Db,
    runner_id: &str,
    cap: &Capacity,
    policy: &QueuePolicy,
) -> sqlx::Result<Option<Claimed>> {
    let now = now_ms();
    let sql = format!(
        "SELECT {CLAIMED_COLUMNS} FROM sanhak_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17)"
    );
    let q = bind_candidates(sqlx::query(&sql), now, cap, policy)
        .bind(runner_id)
        .bind(new_id())
        .bind(now + policy.lease_ms);
    let row = q.fetch_optional(&db.pool).await?;
    row.map(|r| ClaimedRow::from_row(&r).map(Claimed::from))
        .transpose()
}

/// What became of expired leases.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub requeued: u64,
    pub not_gradable: u64,
}

/// Puts jobs whose lease expired back on the queue, or, after their last
/// attempt, marks them not gradable with the reason.
#[tracing::instrument(skip_all)]
pub async fn reap_expired(db: &Db) -> sqlx::Result<Reaped> {
    let now = now_ms();
    let given_up = sqlx::query(&format!(
        "UPDATE jobs SET state = 'not_gradable', outcome = 'not_gradable', lease = NULL, finished_ms = $1, \
         fault = 'infrastructure', message = 'not gradable: the runner stopped answering on every one of ' || \
         CAST(attempts AS TEXT) || ' attempts' \
         WHERE state IN {ACTIVE} AND lease_expires_ms < $1 AND attempts >= max_attempts"
    ))
    .bind(now)
    .execute(&db.pool)
    .await?
    .rows_affected();
    let requeued = sqlx::query(&format!(
        "UPDATE jobs SET state = 'queued', lease = NULL, lease_expires_ms = NULL, runner_id = NULL, \
         message = 'requeued: the runner stopped answering' \
         WHERE state IN {ACTIVE} AND lease_expires_ms < $1 AND attempts < max_attempts"
    ))
    .bind(now)
    .execute(&db.pool)
    .await?
    .rows_affected();
    if requeued > 0 {
        clear_events_of_requeued(db).await?;
    }
    Ok(Reaped {
        requeued,
        not_gradable: given_up,
    })
}

/// A requeued job starts its events afresh: the live page shows the attempt
/// that is running, not a mix of two.
async fn clear_events_of_requeued(db: &Db) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE state = 'queued' AND attempts > 0)",
    )
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "UPDATE jobs SET events_stored = 0, events_dropped = 0 WHERE state = 'queued' AND attempts > 0",
    )
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// The lease is live (and was renewed).
    Live,
    /// The job was cancelled: the runner must stop.
    Cancelled,
    /// The lease expired or belongs to someone else: the runner must stop and report nothing.
    Lost,
}

/// Renews a lease and records the phase. Marks the job started on its first
/// `running` heartbeat.
#[tracing::instrument(skip_all)]
pub async fn heartbeat(
    db: &Db,
    job_id: &str,
    lease: &str,
    phase: protocol::Phase,
    policy: &QueuePolicy,
) -> sqlx::Result<LeaseCheck> {
    let now = now_ms();
    let state = match phase {
        protocol::Phase::Running => "running",
        protocol::Phase::Grading => "grading",
    };
    let n = sqlx::query(&format!(
        "UPDATE jobs SET lease_expires_ms = $1, state = $2, started_ms = COALESCE(started_ms, $3) \
         WHERE id = $4 AND lease = $5 AND state IN {ACTIVE} AND lease_expires_ms >= $3"
    ))
    .bind(now + policy.lease_ms)
    .bind(state)
    .bind(now)
    .bind(job_id)
    .bind(lease)
    .execute(&db.pool)
    .await?
    .rows_affected();
    if n == 1 {
        return Ok(LeaseCheck::Live);
    }
    Ok(match state_of(db, job_id).await?.as_deref() {
        Some("cancelled") => LeaseCheck::Cancelled,
        _ => LeaseCheck::Lost,
    })
}

/// Whether `lease` is the live lease of the job.
async fn lease_is_live(db: &Db, job_id: &str, lease: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM jobs WHERE id = $1 AND lease = $2 AND state IN {ACTIVE} AND lease_expires_ms >= $3"
    ))
    .bind(job_id)
    .bind(lease)
    .bind(now_ms())
    .fetch_one(&db.pool)
    .await?;
    Ok(n == 1)
}

pub async fn state_of(db: &Db, job_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&db.pool)
        .await
}

/// An event as stored.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub data: String,
}

/// Stores a batch of events under a live lease, up to the per-job cap.
/// Returns the events that were new and stored (to publish), or `None` when
/// the lease is not live.
#[tracing::instrument(skip_all)]
pub async fn add_events(
    db: &Db,
    job_id: &str,
    lease: &str,
    events: &[protocol::JobEvent],
    policy: &QueuePolicy,
) -> sqlx::Result<Option<Vec<StoredEvent>>> {
    if !lease_is_live(db, job_id, lease).await? {
        return Ok(None);
    }
    let mut tx = db.begin_write().await?;
    let stored: i64 = sqlx::query_scalar("SELECT events_stored FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await?;
    let room = (policy.max_events_per_job - stored).max(0) as usize;
    let mut added = Vec::new();
    let mut dropped = 0i64;
    for e in events {
        if added.len() >= room {
            // Past the cap: count what was new, store nothing.
            let known: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM job_events WHERE job_id = $1 AND seq = $2",
            )
            .bind(job_id)
            .bind(e.seq as i64)
            .fetch_one(&mut *tx)
            .await?;
            dropped += i64::from(known == 0);
            continue;
        }
        let data = e.data.to_string();
        let n = sqlx::query(
            "INSERT INTO job_events (job_id, seq, at_ms, kind, data) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job_id, seq) DO NOTHING",
        )
        .bind(job_id)
        .bind(e.seq as i64)
        .bind(e.at_ms)
        .bind(&e.kind)
        .bind(&data)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            added.push(StoredEvent {
                seq: e.seq as i64,
                at_ms: e.at_ms,
                kind: e.kind.clone(),
                data,
            });
        }
    }
    sqlx::query(
        "UPDATE jobs SET events_stored = events_stored + $1, events_dropped = events_dropped + $2 WHERE id = $3",
    )
    .bind(added.len() as i64)
    .bind(dropped)
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(added))
}

/// Events of a job after `after_seq` (all with `None`), in order.
#[tracing::instrument(skip_all)]
pub async fn events(
    db: &Db,
    job_id: &str,
    after_seq: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    sqlx::query_as(
        "SELECT seq, at_ms, kind, data FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(job_id)
    .bind(after_seq.unwrap_or(-1))
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// The result of a report (complete or fail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Recorded; the job is now in this state.
    Recorded(String),
    /// The job already has its result: this report changes nothing.
    Duplicate(String),
    /// The lease expired or was never this runner's: refused.
    LeaseLost,
    NoSuchJob,
}

async fn after_refused_report(db: &Db, job_id: &str) -> sqlx::Result<Report> {
    Ok(match state_of(db, job_id).await? {
        None => Report::NoSuchJob,
        Some(s) if is_final(&s) => Report::Duplicate(s),
        Some(_) => Report::LeaseLost,
    })
}

/// Whether a state is final.
pub fn is_final(state: &str) -> bool {
    matches!(state, "done" | "failed" | "not_gradable" | "cancelled")
}

/// Records the grade of a job under its live lease, and charges the
/// course's usage. Exactly once: the update only matches a live lease.
#[tracing::instrument(skip_all)]
pub async fn complete(
    db: &Db,
    job_id: &str,
    c: &protocol::Complete,
    policy: &QueuePolicy,
) -> sqlx::Result<Report> {
    let now = now_ms();
    let (state, fault) = match c.outcome {
        protocol::Outcome::Graded => ("done", None),
        protocol::Outcome::Rejected => ("done", Some("submission")),
        protocol::Outcome::NotGradable => ("not_gradable", Some("infrastructure")),
    };
    let outcome = match c.outcome {
        protocol::Outcome::Graded => "graded",
        protocol::Outcome::Rejected => "rejected",
        protocol::Outcome::NotGradable => "not_gradable",
    };
    let artifacts = serde_json::to_string(&c.artifacts).unwrap_or_else(|_| "[]".into());
    let mut tx = db.begin_write().await?;
    let row = sqlx::query(&format!(
        "UPDATE jobs SET state = $1, outcome = $2, points = $3, max_points = $4, metric = $5, public_metric = $6, \
         message = $7, report = $8, artifacts = $9, fault = $10, cpu_seconds = $11, gpu_seconds = $12, \
         wall_used = $13, finished_ms = $14, lease = NULL, lease_expires_ms = NULL \
         WHERE id = $15 AND lease = $16 AND state IN {ACTIVE} AND lease_expires_ms >= $14 \
         RETURNING course_id, gpu_count, gpu_seconds, cpu_seconds"
    ))
    .bind(state)
    .bind(outcome)
    .bind(c.points)
    .bind(c.max_points)
    .bind(c.metric.filter(|m| m.is_finite()))
    .bind(c.public_metric.filter(|m| m.is_finite()))
    .bind(&c.message)
    .bind(c.report.to_string())
    .bind(artifacts)
    .bind(fault)
    .bind(c.usage.cpu_seconds)
    .bind(c.usage.gpu_seconds)
    .bind(c.usage.wall_seconds)
    .bind(now)
    .bind(job_id)
    .bind(&c.lease)
    // Not cached: sqlx 0.8's `Any` driver sends a `None` f64 to PostgreSQL as
    // a float4 NULL, so a statement prepared with one would reject a later
    // f64 on the same connection ("incorrect binary data format").
    .persistent(false)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return after_refused_report(db, job_id).await;
    };
    let course_id: String = row.try_get(0)?;
    charge_usage(&mut tx, &course_id, &c.usage, now, policy).await?;
    vouchers::settle(&mut tx, job_id, measured_of(&row, 1, policy)?).await?;
    tx.commit().await?;
    Ok(Report::Recorded(state.into()))
}

/// Records a failure under the live lease. The submission's fault ends the
/// job (`failed`); an infrastructure fault puts it back on the queue while
/// attempts remain, and makes it not gradable after the last.
#[tracing::instrument(skip_all)]
pub async fn fail(
    db: &Db,
    job_id: &str,
    f: &protocol::Fail,
    policy: &QueuePolicy,
) -> sqlx::Result<Report> {
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let row = match f.fault {
        protocol::Fault::Submission => {
            sqlx::query(&format!(
                "UPDATE jobs SET state = 'failed', outcome = 'failed', fault = 'submission', message = $1, \
                 cpu_seconds = $2, gpu_seconds = $3, wall_used = $4, finished_ms = $5, lease = NULL, \
                 lease_expires_ms = NULL \
                 WHERE id = $6 AND lease = $7 AND state IN {ACTIVE} AND lease_expires_ms >= $5 \
                 RETURNING course_id, state, gpu_count, gpu_seconds, cpu_seconds"
            ))
            .bind(&f.message)
            .bind(f.usage.cpu_seconds)
            .bind(f.usage.gpu_seconds)
            .bind(f.usage.wall_seconds)
            .bind(now)
            .bind(job_id)
            .bind(&f.lease)
            .fetch_optional(&mut *tx)
            .await?
        }
        protocol::Fault::Infrastructure => {
            sqlx::query(&format!(
                "UPDATE jobs SET \
                   state = CASE WHEN attempts >= max_attempts THEN 'not_gradable' ELSE 'queued' END, \
                   outcome = CASE WHEN attempts >= max_attempts THEN 'not_gradable' ELSE NULL END, \
                   finished_ms = CASE WHEN attempts >= max_attempts THEN $5 ELSE NULL END, \
                   fault = 'infrastructure', message = $1, cpu_seconds = cpu_seconds + $2, \
                   gpu_seconds = gpu_seconds + $3, wall_used = wall_used + $4, lease = NULL, \
                   lease_expires_ms = NULL, runner_id = NULL \
                 WHERE id = $6 AND lease = $7 AND state IN {ACTIVE} AND lease_expires_ms >= $5 \
                 RETURNING course_id, state, gpu_count, gpu_seconds, cpu_seconds"
            ))
            .bind(&f.message)
            .bind(f.usage.cpu_seconds)
            .bind(f.usage.gpu_seconds)
            .bind(f.usage.wall_seconds)
            .bind(now)
            .bind(job_id)
            .bind(&f.lease)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let Some(row) = row else {
        tx.rollback().await?;
        return after_refused_report(db, job_id).await;
    };
    let course_id: String = row.try_get(0)?;
    let state: String = row.try_get(1)?;
    charge_usage(&mut tx, &course_id, &f.usage, now, policy).await?;
    if is_final(&state) {
        vouchers::settle(&mut tx, job_id, measured_of(&row, 2, policy)?).await?;
    }
    tx.commit().await?;
    if state == "queued" {
        clear_events_of_requeued(db).await?;
    }
    Ok(Report::Recorded(state))
}

/// What a job measured, in milli-GPU-seconds, from the `gpu_count,
/// gpu_seconds, cpu_seconds` columns of `row` starting at `at`.
fn measured_of(row: &super::Row, at: usize, policy: &QueuePolicy) -> sqlx::Result<i64> {
    Ok(vouchers::measured_ms(
        row.try_get(at)?,
        row.try_get(at + 1)?,
        row.try_get(at + 2)?,
        policy.cpu_rate,
    ))
}

async fn charge_usage(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    course_id: &str,
    usage: &protocol::Usage,
    now: i64,
    policy: &QueuePolicy,
) -> sqlx::Result<()> {
    let seconds = usage.gpu_seconds + usage.cpu_seconds;
    // Decay on read is hyperbolic (see CANDIDATES); here the stored value is
    // brought to `now` with the same formula before adding.
    sqlx::query(
        "INSERT INTO course_usage (course_id, seconds, updated_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (course_id) DO UPDATE SET \
           seconds = course_usage.seconds * $4 / ($4 + ($3 - course_usage.updated_ms)) + excluded.seconds, \
           updated_ms = excluded.updated_ms",
    )
    .bind(course_id)
    .bind(seconds)
    .bind(now)
    .bind(policy.usage_half_life_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Cancels a job: a queued one at once; a running one loses its lease, and
/// the runner learns it at its next heartbeat. Returns the new state, or
/// `None` when the job had already finished.
#[tracing::instrument(skip_all)]
pub async fn cancel(db: &Db, job_id: &str, by: &str) -> sqlx::Result<Option<String>> {
    let mut tx = db.begin_write().await?;
    let row = sqlx::query(
        "UPDATE jobs SET state = 'cancelled', outcome = 'cancelled', cancel_requested = 1, lease = NULL, \
         lease_expires_ms = NULL, finished_ms = $1, message = $2 \
         WHERE id = $3 AND state IN ('queued', 'leased', 'running', 'grading') \
         RETURNING gpu_count, gpu_seconds, cpu_seconds",
    )
    .bind(now_ms())
    .bind(format!("cancelled by {by}"))
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    // A cancelled job is charged what it measured so far. A job that
    // measured nothing (the usual case: its runner never reported) gives its
    // whole hold back now; one that measured something is settled by the
    // reaper's sweep (`vouchers::settle_finished`), which knows the CPU rate.
    let gpu_seconds: f64 = row.try_get(1)?;
    let cpu_seconds: f64 = row.try_get(2)?;
    if gpu_seconds <= 0.0 && cpu_seconds <= 0.0 {
        vouchers::settle(&mut tx, job_id, 0).await?;
    }
    tx.commit().await?;
    Ok(Some("cancelled".to_owned()))
}

/// A job with its submission, as the API shows it.
#[derive(Debug, Clone, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub submission_id: String,
    pub course_id: String,
    pub user_id: String,
    pub lab_id: String,
    pub lab_version: String,
    pub kind: String,
    pub state: String,
    pub attempts: i64,
    pub enqueued_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub outcome: Option<String>,
    pub points: Option<f64>,
    pub max_points: Option<f64>,
    /// Metric on the whole hidden split: staff only (cleared for students).
    pub metric: Option<f64>,
    pub public_metric: Option<f64>,
    pub message: String,
    pub fault: Option<String>,
    pub cpu_seconds: f64,
    pub gpu_seconds: f64,
    pub wall_used: f64,
    pub events_stored: i64,
    pub events_dropped: i64,
}

const VIEW: &str = "SELECT j.id, j.submission_id, j.course_id, j.user_id, j.lab_id, s.lab_version, s.kind, \
    j.state, j.attempts, j.enqueued_ms, j.started_ms, j.finished_ms, j.outcome, j.points, j.max_points, \
    j.metric, j.public_metric, j.message, j.fault, j.cpu_seconds, j.gpu_seconds, j.wall_used, \
    j.events_stored, j.events_dropped FROM jobs j JOIN submissions s ON s.id = j.submission_id";

pub async fn view(db: &Db, job_id: &str) -> sqlx::Result<Option<JobView>> {
    sqlx::query_as(&format!("{VIEW} WHERE j.id = $1"))
        .bind(job_id)
        .fetch_optional(&db.pool)
        .await
}

/// The submission a claimed job runs: kind, content, content hash, lab version.
#[derive(Debug, Clone, FromRow)]
pub struct SubmissionBody {
    pub kind: String,
    pub content: String,
    pub content_hash: String,
    pub lab_version: String,
    pub lab_hash: String,
}

pub async fn submission_body(db: &Db, submission_id: &str) -> sqlx::Result<SubmissionBody> {
    sqlx::query_as(
        "SELECT kind, content, content_hash, lab_version, lab_hash FROM submissions WHERE id = $1",
    )
    .bind(submission_id)
    .fetch_one(&db.pool)
    .await
}

/// Jobs in each state (for `/metrics` and the admin).
pub async fn counts(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Position in the queue: queued jobs enqueued before this one.
pub async fn queue_position(db: &Db, job_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.state = 'queued' AND q.enqueued_ms <= j.enqueued_ms AND q.id <> j.id) \
         FROM jobs j WHERE j.id = $1 AND j.state = 'queued'",
    )
    .bind(job_id)
    .fetch_optional(&db.pool)
    .await
}
