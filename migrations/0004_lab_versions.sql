-- Published lab package versions. A version is immutable: its files live
-- under <data_dir>/lab-store/<lab_id>/<content_hash>/ (folder labs stay in
-- the labs folder) and (lab_id, version) names one content hash for good.
-- A version is 'checking' until `lab check --quick` ran, then 'live' (in the
-- catalog, offerable) or 'rejected' (with the report saying why).
CREATE TABLE lab_versions (
    id           TEXT PRIMARY KEY,
    lab_id       TEXT NOT NULL,
    version      TEXT NOT NULL,
    -- The package hash (SHA-256 over every file's path and content hash).
    content_hash TEXT NOT NULL,
    title        TEXT NOT NULL,
    published_by TEXT REFERENCES users (id) ON DELETE SET NULL,
    published_at BIGINT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('folder', 'upload', 'push')),
    state        TEXT NOT NULL CHECK (state IN ('checking', 'live', 'rejected')),
    -- The check's report as text (JSON of the runner's CheckReport, or the error).
    check_report TEXT,
    checked_at   BIGINT,
    UNIQUE (lab_id, version)
);

CREATE INDEX lab_versions_by_lab ON lab_versions (lab_id, published_at);
