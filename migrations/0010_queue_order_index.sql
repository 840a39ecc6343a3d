-- The claim walks each course's queued jobs in (enqueued_ms, id) order and
-- stops after a few eligible ones. With `id` in the index, the index gives
-- that whole order, so the walk stops early instead of sorting every queued
-- job of the course (and re-counting each one's student) on every claim.
CREATE INDEX jobs_course_queue_order ON jobs (course_id, state, enqueued_ms, id);
DROP INDEX jobs_course_queue;
