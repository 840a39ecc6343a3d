-- The lab experience: release and due dates, late rules, attempt limits,
-- points and counting per lab of a course; per-student extensions; the late
-- penalty each submission was given; leaderboard names.

-- When students can see the lab (NULL: at once).
ALTER TABLE course_labs ADD COLUMN release_at BIGINT;
-- After the deadline: 'none' refuses submissions; 'penalty' accepts them for
-- late_days days, each started day late costing late_penalty_pct percent.
ALTER TABLE course_labs ADD COLUMN late_policy TEXT NOT NULL DEFAULT 'none'
    CHECK (late_policy IN ('none', 'penalty'));
ALTER TABLE course_labs ADD COLUMN late_penalty_pct DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE course_labs ADD COLUMN late_days BIGINT NOT NULL DEFAULT 0;
-- Attempts in all and in any 24 hours (NULL: no limit). Attempts that end
-- not gradable or cancelled do not count.
ALTER TABLE course_labs ADD COLUMN max_attempts BIGINT;
ALTER TABLE course_labs ADD COLUMN max_per_day BIGINT;
-- Points in the course gradebook (NULL: the lab's own points).
ALTER TABLE course_labs ADD COLUMN points DOUBLE PRECISION;
-- Which attempt counts: the best or the last graded one.
ALTER TABLE course_labs ADD COLUMN counts TEXT NOT NULL DEFAULT 'best'
    CHECK (counts IN ('best', 'last'));
-- When students see private leaderboard scores: after the deadline, now, or never.
ALTER TABLE course_labs ADD COLUMN private_scores TEXT NOT NULL DEFAULT 'after_deadline'
    CHECK (private_scores IN ('after_deadline', 'released', 'hidden'));

-- A later deadline for one student.
CREATE TABLE lab_extensions (
    course_id  TEXT NOT NULL,
    lab_id     TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    due_at     BIGINT NOT NULL,
    granted_by TEXT REFERENCES users (id) ON DELETE SET NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (course_id, lab_id, user_id),
    FOREIGN KEY (course_id, lab_id) REFERENCES course_labs (course_id, lab_id) ON DELETE CASCADE
);

-- Seconds after the (extended) deadline a submission was made, and the
-- penalty in percent that it carries. Fixed when it is made.
ALTER TABLE submissions ADD COLUMN late_seconds BIGINT NOT NULL DEFAULT 0;
ALTER TABLE submissions ADD COLUMN penalty_pct DOUBLE PRECISION NOT NULL DEFAULT 0;

-- The name a student shows on leaderboards of a course (NULL: anonymous).
ALTER TABLE enrollments ADD COLUMN leaderboard_name TEXT;
