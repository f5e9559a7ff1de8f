-- lwr schema 1 (SQLite). Times are milliseconds since the Unix epoch.
CREATE TABLE graphs (
    id          INTEGER PRIMARY KEY,
    repository  TEXT,
    branch      TEXT,
    revision    TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY,
    graph_id      INTEGER NOT NULL REFERENCES graphs (id),
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,
    -- needs that have not succeeded yet; the job is ready when this is 0
    unmet         INTEGER NOT NULL,
    spec          TEXT NOT NULL,
    -- JSON requirements, NULL when any node will do (the common, fast case)
    requirements  TEXT,
    retries_left  INTEGER NOT NULL,
    runs          INTEGER NOT NULL DEFAULT 0,
    node          TEXT,
    reason        TEXT,
    updated_at    INTEGER NOT NULL,
    -- also the index for a graph's jobs; deliberately none on state, so a state change
    -- rewrites no index page beyond jobs_ready
    UNIQUE (graph_id, name)
);
CREATE INDEX jobs_ready ON jobs (id) WHERE state = 'pending' AND unmet = 0;

CREATE TABLE job_needs (
    job_id   INTEGER NOT NULL REFERENCES jobs (id),
    need_id  INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, need_id)
);
CREATE INDEX job_needs_need ON job_needs (need_id);

CREATE TABLE nodes (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    properties     TEXT NOT NULL,
    slots          INTEGER NOT NULL,
    registered_at  INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL
);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    job_id         INTEGER NOT NULL REFERENCES jobs (id),
    number         INTEGER NOT NULL,
    node_id        INTEGER NOT NULL REFERENCES nodes (id),
    uid            TEXT NOT NULL,
    state          TEXT NOT NULL,
    exit_code      INTEGER,
    reason         TEXT,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    lease_expires  INTEGER,
    log_size       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, number)
);
CREATE INDEX runs_live ON runs (lease_expires) WHERE state = 'running';
