-- Runner service: labs offered in a course, submissions, the job queue with
-- leases, job events, and runner tokens. Times in *_ms columns are unix
-- milliseconds (the queue measures sub-second waits); the rest are seconds.

-- Which lab packages a course offers (deadlines and policies come later).
CREATE TABLE course_labs (
    course_id TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    lab_id    TEXT NOT NULL,
    -- Jobs of a lab whose deadline is near run first (NULL: no deadline).
    due_at    BIGINT,
    added_at  BIGINT NOT NULL,
    PRIMARY KEY (course_id, lab_id)
);

-- A submission is immutable: its content, its hash and the lab version it ran against.
CREATE TABLE submissions (
    id           TEXT PRIMARY KEY,
    course_id    TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    lab_id       TEXT NOT NULL,
    lab_version  TEXT NOT NULL,
    lab_hash     TEXT NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL CHECK (kind IN ('recipe', 'code')),
    content      TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX submissions_user ON submissions (course_id, user_id, lab_id, created_at);

CREATE TABLE runners (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_by   TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    -- What it registered last: JSON of the protocol's Register body.
    capacity     TEXT NOT NULL DEFAULT '{}',
    last_seen_at BIGINT
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    submission_id    TEXT NOT NULL UNIQUE REFERENCES submissions (id) ON DELETE CASCADE,
    course_id        TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lab_id           TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'running', 'grading',
                         'done', 'failed', 'not_gradable', 'cancelled')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    runner_id        TEXT REFERENCES runners (id) ON DELETE SET NULL,
    lease            TEXT,
    lease_expires_ms BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    cpu_slots        BIGINT NOT NULL,
    gpu_count        BIGINT NOT NULL,
    gpu_memory_mb    BIGINT NOT NULL,
    memory_mb        BIGINT NOT NULL,
    wall_seconds     BIGINT NOT NULL,
    step_scale       DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    -- Deadline of the lab when enqueued (NULL: none); near deadlines go first.
    due_at_ms        BIGINT,
    enqueued_ms      BIGINT NOT NULL,
    started_ms       BIGINT,
    finished_ms      BIGINT,
    cpu_seconds      DOUBLE PRECISION NOT NULL DEFAULT 0,
    gpu_seconds      DOUBLE PRECISION NOT NULL DEFAULT 0,
    wall_used        DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- The grade (done) or the reason (failed, not_gradable, cancelled).
    outcome          TEXT,
    points           DOUBLE PRECISION,
    max_points       DOUBLE PRECISION,
    metric           DOUBLE PRECISION,
    public_metric    DOUBLE PRECISION,
    message          TEXT NOT NULL DEFAULT '',
    report           TEXT NOT NULL DEFAULT '{}',
    artifacts        TEXT NOT NULL DEFAULT '[]',
    fault            TEXT,
    events_stored    BIGINT NOT NULL DEFAULT 0,
    events_dropped   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_queue ON jobs (state, enqueued_ms);
CREATE INDEX jobs_student ON jobs (user_id, course_id, state);
CREATE INDEX jobs_course_queue ON jobs (course_id, state, enqueued_ms);
CREATE INDEX jobs_due ON jobs (state, due_at_ms);

CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    at_ms  BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Recent usage per course, for fair share: decayed seconds.
CREATE TABLE course_usage (
    course_id  TEXT PRIMARY KEY REFERENCES courses (id) ON DELETE CASCADE,
    seconds    DOUBLE PRECISION NOT NULL,
    updated_ms BIGINT NOT NULL
);
