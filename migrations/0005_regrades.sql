-- Regrading: after a lab is updated, an instructor requeues every counted
-- submission against the new version. The new results stay beside the old
-- until the instructor accepts them (or discards them).
CREATE TABLE regrades (
    id          TEXT PRIMARY KEY,
    course_id   TEXT NOT NULL,
    lab_id      TEXT NOT NULL,
    lab_version TEXT NOT NULL,
    lab_hash    TEXT NOT NULL,
    created_by  TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    -- running → accepted | discarded; an accepted one becomes superseded
    -- when a later regrade of the same lab is accepted.
    state       TEXT NOT NULL CHECK (state IN ('running', 'accepted', 'discarded', 'superseded')),
    decided_at  BIGINT,
    FOREIGN KEY (course_id, lab_id) REFERENCES course_labs (course_id, lab_id) ON DELETE CASCADE
);
CREATE INDEX regrades_lab ON regrades (course_id, lab_id, created_at);

-- A regrade's copy of a submission: the same content against a new lab
-- version. It is never an attempt of the student.
ALTER TABLE submissions ADD COLUMN regrade_id TEXT REFERENCES regrades (id) ON DELETE CASCADE;
ALTER TABLE submissions ADD COLUMN regrade_of TEXT REFERENCES submissions (id) ON DELETE CASCADE;
CREATE INDEX submissions_regrade ON submissions (regrade_of, regrade_id);
