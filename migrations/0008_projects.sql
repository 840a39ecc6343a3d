-- Joint projects after posting: teams that express interest in a project
-- posting, faculty endorsements, the two final approvals (the company and a
-- faculty advisor) and, once both are given, the team's project space:
-- milestones, a message thread and files.

-- A team's expression of interest in a joint-project posting.
-- interested → endorsed (optional, by faculty) → company_approved |
-- advisor_approved → formed (both approvals given); withdrawn (by the lead)
-- or declined (by the company or faculty) at any point before formed.
CREATE TABLE project_teams (
    id                  TEXT PRIMARY KEY,
    posting_id          TEXT NOT NULL REFERENCES postings (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    lead_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Markdown: why this team, what it brings.
    statement           TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('interested', 'endorsed', 'company_approved', 'advisor_approved', 'formed', 'withdrawn', 'declined')),
    company_approved_by TEXT REFERENCES users (id) ON DELETE SET NULL,
    company_approved_at BIGINT,
    -- The faculty member who approved the team becomes its advisor.
    advisor_id          TEXT REFERENCES users (id) ON DELETE SET NULL,
    advisor_approved_at BIGINT,
    formed_at           BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX project_teams_posting ON project_teams (posting_id, state);

-- The lead and the students the lead chose. Chosen members confirm
-- (invited → accepted | declined). `active` is 1 while the person is on a
-- team of the posting that is still alive, so the partial unique index
-- keeps everyone on at most one live team per posting, on both backends.
CREATE TABLE project_team_members (
    team_id         TEXT NOT NULL REFERENCES project_teams (id) ON DELETE CASCADE,
    posting_id      TEXT NOT NULL REFERENCES postings (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('lead', 'member')),
    status          TEXT NOT NULL CHECK (status IN ('invited', 'accepted', 'declined')),
    active          BIGINT NOT NULL DEFAULT 1,
    -- When the member acknowledged the posting's NDA notice (if it has one).
    nda_ack_at      BIGINT,
    invited_at      BIGINT NOT NULL,
    answered_at     BIGINT,
    PRIMARY KEY (team_id, user_id)
);
CREATE UNIQUE INDEX project_team_members_live ON project_team_members (posting_id, user_id) WHERE active = 1;
CREATE INDEX project_team_members_user ON project_team_members (user_id);

-- A faculty member's endorsement of a team, with an optional note.
CREATE TABLE project_endorsements (
    team_id    TEXT NOT NULL REFERENCES project_teams (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    note       TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

-- Every state change of a team: who, from what, to what, when, and why.
CREATE TABLE project_team_events (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES project_teams (id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    by_user    TEXT REFERENCES users (id) ON DELETE SET NULL,
    comment    TEXT NOT NULL DEFAULT '',
    at         BIGINT NOT NULL
);
CREATE INDEX project_team_events_team ON project_team_events (team_id, at);

-- The project space of a formed team.
CREATE TABLE project_milestones (
    id          TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES project_teams (id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- An ISO date (YYYY-MM-DD); a milestone not done after it shows as late.
    due_on      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('planned', 'in_progress', 'done')),
    created_by  TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    done_at     BIGINT
);
CREATE INDEX project_milestones_team ON project_milestones (team_id, due_on);

CREATE TABLE project_messages (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES project_teams (id) ON DELETE CASCADE,
    author_id  TEXT REFERENCES users (id) ON DELETE SET NULL,
    -- Markdown, rendered through the sanitising renderer.
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX project_messages_team ON project_messages (team_id, created_at);

-- Files shared in a project space; the bytes are reached only through the
-- stored_files row.
CREATE TABLE project_files (
    id          TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES project_teams (id) ON DELETE CASCADE,
    file_id     TEXT NOT NULL REFERENCES stored_files (id) ON DELETE CASCADE,
    uploaded_by TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX project_files_team ON project_files (team_id, created_at);
