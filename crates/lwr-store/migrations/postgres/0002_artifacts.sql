-- lwr schema 2 (PostgreSQL): artifacts, manifests and the log's hash.
CREATE TABLE artifacts (
    id            BIGSERIAL PRIMARY KEY,
    run_id        BIGINT NOT NULL REFERENCES runs (id),
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    path          TEXT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    -- where the artifact store keeps it; unique per upload, so a refused upload never
    -- replaces a stored object
    storage_key   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    UNIQUE (run_id, name)
);
CREATE INDEX artifacts_expiry ON artifacts (expires_at);

-- What only the node knows about a run's manifest; the rest comes from runs and artifacts.
CREATE TABLE manifests (
    run_id      BIGINT PRIMARY KEY REFERENCES runs (id),
    missing     TEXT NOT NULL,
    extra       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

ALTER TABLE runs ADD COLUMN log_sha256 TEXT;
