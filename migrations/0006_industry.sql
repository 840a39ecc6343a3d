-- Industry side: company ↔ university connections, postings (joint
-- projects, internships, visiting-engineer positions), applications with
-- their history and internal notes, uploaded files and in-app notifications.

-- Level one of the two-level approval: a company asks to reach a
-- university's students; a university admin approves (or rejects, or later
-- revokes). Only an approved connection lets the company submit postings.
CREATE TABLE org_connections (
    company_id    TEXT NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    university_id TEXT NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    state         TEXT NOT NULL CHECK (state IN ('requested', 'approved', 'rejected', 'revoked')),
    message       TEXT NOT NULL DEFAULT '',
    requested_by  TEXT REFERENCES users (id) ON DELETE SET NULL,
    requested_at  BIGINT NOT NULL,
    decided_by    TEXT REFERENCES users (id) ON DELETE SET NULL,
    decided_at    BIGINT,
    PRIMARY KEY (company_id, university_id)
);
CREATE INDEX org_connections_university ON org_connections (university_id, state);

-- Uploaded files (CVs, project files). The bytes live content-addressed
-- under <data_dir>/files/; this row is the only way to reach them.
CREATE TABLE stored_files (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT REFERENCES users (id) ON DELETE SET NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- Level two: each posting is approved by an admin of the university it
-- addresses. kind 'project' and 'internship' are posted by a company to a
-- university's students; 'visiting' (a visiting-engineer or adjunct
-- position) is posted by a university, and company members apply.
CREATE TABLE postings (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('project', 'internship', 'visiting')),
    org_id         TEXT NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    university_id  TEXT NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    title          TEXT NOT NULL,
    -- Markdown: the problem statement, or the role's description.
    body           TEXT NOT NULL DEFAULT '',
    requirements   TEXT NOT NULL DEFAULT '',
    -- Normalised, comma-delimited and comma-wrapped (",nlp,pytorch,") so one
    -- LIKE finds a whole skill.
    skills         TEXT NOT NULL DEFAULT ',',
    role           TEXT NOT NULL DEFAULT '',
    location       TEXT NOT NULL DEFAULT '',
    remote         BIGINT NOT NULL DEFAULT 0,
    -- The period as ISO dates (YYYY-MM-DD).
    starts_on      TEXT,
    ends_on        TEXT,
    compensation   TEXT NOT NULL DEFAULT '',
    apply_by       BIGINT,
    -- Joint projects.
    dataset        TEXT NOT NULL DEFAULT '',
    duration_weeks BIGINT,
    team_size      BIGINT,
    mentor_id      TEXT REFERENCES users (id) ON DELETE SET NULL,
    nda_required   BIGINT NOT NULL DEFAULT 0,
    -- draft → submitted → approved | changes_requested → open → closed | expired
    state          TEXT NOT NULL CHECK (state IN ('draft', 'submitted', 'approved', 'changes_requested', 'open', 'closed', 'expired')),
    created_by     TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX postings_state ON postings (state, kind, apply_by);
CREATE INDEX postings_org ON postings (org_id);
CREATE INDEX postings_university ON postings (university_id, state);

-- Every state change of a posting, with the reviewer's comments.
CREATE TABLE posting_events (
    id         TEXT PRIMARY KEY,
    posting_id TEXT NOT NULL REFERENCES postings (id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    by_user    TEXT REFERENCES users (id) ON DELETE SET NULL,
    comment    TEXT NOT NULL DEFAULT '',
    at         BIGINT NOT NULL
);
CREATE INDEX posting_events_posting ON posting_events (posting_id, at);

-- An application to an internship or visiting position (and, for joint
-- projects, a team's expression of interest; teams are in a later table).
CREATE TABLE applications (
    id           TEXT PRIMARY KEY,
    posting_id   TEXT NOT NULL REFERENCES postings (id) ON DELETE CASCADE,
    applicant_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    statement    TEXT NOT NULL,
    cv_file_id   TEXT REFERENCES stored_files (id) ON DELETE SET NULL,
    -- applied → under_review → interview → offer → accepted | declined;
    -- withdrawn (by the applicant) or rejected (by the posting side) on the way.
    state        TEXT NOT NULL CHECK (state IN ('applied', 'under_review', 'interview', 'offer', 'accepted', 'declined', 'withdrawn', 'rejected')),
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (posting_id, applicant_id)
);
CREATE INDEX applications_applicant ON applications (applicant_id);

-- The application's history: who moved it, from what, to what, when.
CREATE TABLE application_events (
    id             TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    from_state     TEXT,
    to_state       TEXT NOT NULL,
    by_user        TEXT REFERENCES users (id) ON DELETE SET NULL,
    at             BIGINT NOT NULL
);
CREATE INDEX application_events_application ON application_events (application_id, at);

-- Notes only the posting side sees; never shown to the applicant.
CREATE TABLE application_notes (
    id             TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    author_id      TEXT REFERENCES users (id) ON DELETE SET NULL,
    body           TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX application_notes_application ON application_notes (application_id, created_at);

-- In-app notifications; the navigation bar shows the unread count.
CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message    TEXT NOT NULL,
    link       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at    BIGINT
);
CREATE INDEX notifications_user ON notifications (user_id, read_at, created_at);
