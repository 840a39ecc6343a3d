-- GPU-credit vouchers. A site admin grants a voucher to a budget: a course,
-- a project or an organisation, named by (scope_kind, scope_id). Projects
-- live in another area's table, so the scope carries no foreign key.
-- Amounts are integers in milli-GPU-seconds (1 GPU-hour = 3 600 000), so
-- sums are exact on both backends. A voucher is never changed once granted.
CREATE TABLE vouchers (
    id          TEXT PRIMARY KEY,
    scope_kind  TEXT NOT NULL CHECK (scope_kind IN ('course', 'project', 'org')),
    scope_id    TEXT NOT NULL,
    amount_ms   BIGINT NOT NULL CHECK (amount_ms > 0),
    -- The programme's unit, e.g. '160 TF' (empty: none).
    tf_label    TEXT NOT NULL DEFAULT '',
    -- Counts for new jobs from valid_from (inclusive) to valid_until (exclusive).
    valid_from  BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    -- Who gives the credit, e.g. the programme's name.
    source      TEXT NOT NULL,
    granted_by  TEXT,
    granted_at  BIGINT NOT NULL,
    CHECK (valid_until > valid_from)
);
CREATE INDEX vouchers_scope ON vouchers (scope_kind, scope_id, valid_until);

-- The ledger is append-only: rows are inserted and never updated or deleted;
-- a voucher's balance is the sum of its rows. A job holds its worst case
-- when it is submitted ('hold', negative); when it ends the hold is released
-- ('release', positive) and the measured use charged ('charge', negative,
-- never more than the hold, so a balance never goes below zero).
-- course_id, user_id and lab_id are copied from the job (no foreign keys:
-- deleting a course or a user must not change the ledger).
CREATE TABLE voucher_ledger (
    id          TEXT PRIMARY KEY,
    voucher_id  TEXT NOT NULL REFERENCES vouchers (id),
    kind        TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'release', 'charge', 'adjustment')),
    amount_ms   BIGINT NOT NULL,
    job_id      TEXT,
    course_id   TEXT,
    user_id     TEXT,
    lab_id      TEXT,
    -- Charges: what the job measured, in milli-GPU-seconds (may exceed the amount).
    measured_ms BIGINT,
    note        TEXT NOT NULL DEFAULT '',
    created_by  TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX voucher_ledger_voucher ON voucher_ledger (voucher_id, at);
CREATE INDEX voucher_ledger_job ON voucher_ledger (job_id, kind);
CREATE INDEX voucher_ledger_student ON voucher_ledger (course_id, user_id);

-- An instructor's cap on what one student may use of a course's budget.
CREATE TABLE course_gpu_caps (
    course_id  TEXT PRIMARY KEY REFERENCES courses (id) ON DELETE CASCADE,
    cap_ms     BIGINT NOT NULL CHECK (cap_ms > 0),
    set_by     TEXT,
    set_at     BIGINT NOT NULL
);
