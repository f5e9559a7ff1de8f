-- lwr schema 1 (PostgreSQL). Times are milliseconds since the Unix epoch.
CREATE TABLE graphs (
    id          BIGSERIAL PRIMARY KEY,
    repository  TEXT,
    branch      TEXT,
    revision    TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    graph_id      BIGINT NOT NULL REFERENCES graphs (id),
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,
    -- needs that have not succeeded yet; the job is ready when this is 0
    unmet         BIGINT NOT NULL,
    spec          TEXT NOT NULL,
    -- JSON requirements, NULL when any node will do (the common, fast case)
    requirements  TEXT,
    retries_left  BIGINT NOT NULL,
    runs          BIGINT NOT NULL DEFAULT 0,
    node          TEXT,
    reason        TEXT,
    updated_at    BIGINT NOT NULL,
    -- also the index for a graph's jobs; deliberately none on state, so a state change
    -- rewrites no index page beyond jobs_ready
    UNIQUE (graph_id, name)
);
CREATE INDEX jobs_ready ON jobs (id) WHERE state = 'pending' AND unmet = 0;

CREATE TABLE job_needs (
    job_id   BIGINT NOT NULL REFERENCES jobs (id),
    need_id  BIGINT NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, need_id)
);
CREATE INDEX job_needs_need ON job_needs (need_id);

CREATE TABLE nodes (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    properties     TEXT NOT NULL,
    slots          BIGINT NOT NULL,
    registered_at  BIGINT NOT NULL,
    last_seen      BIGINT NOT NULL
);

CREATE TABLE runs (
    id             BIGSERIAL PRIMARY KEY,
    job_id         BIGINT NOT NULL REFERENCES jobs (id),
    number         BIGINT NOT NULL,
    node_id        BIGINT NOT NULL REFERENCES nodes (id),
    uid            TEXT NOT NULL,
    state          TEXT NOT NULL,
    exit_code      BIGINT,
    reason         TEXT,
    started_at     BIGINT NOT NULL,
    finished_at    BIGINT,
    lease_expires  BIGINT,
    log_size       BIGINT NOT NULL DEFAULT 0,
    UNIQUE (job_id, number)
);
CREATE INDEX runs_live ON runs (lease_expires) WHERE state = 'running';
