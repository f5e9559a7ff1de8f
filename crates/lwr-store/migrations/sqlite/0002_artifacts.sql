-- lwr schema 2 (SQLite): artifacts, manifests and the log's hash.
CREATE TABLE artifacts (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES runs (id),
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    path          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    -- where the artifact store keeps it; unique per upload, so a refused upload never
    -- replaces a stored object
    storage_key   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    UNIQUE (run_id, name)
);
CREATE INDEX artifacts_expiry ON artifacts (expires_at);

-- What only the node knows about a run's manifest; the rest comes from runs and artifacts.
CREATE TABLE manifests (
    run_id      INTEGER PRIMARY KEY REFERENCES runs (id),
    missing     TEXT NOT NULL,
    extra       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

ALTER TABLE runs ADD COLUMN log_sha256 TEXT;
