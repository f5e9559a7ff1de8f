-- lwr schema 3 (PostgreSQL): polled repositories, pushes, and jobs that wait for their needs to
-- finish whatever the result. Times are milliseconds since the Unix epoch.
CREATE TABLE repos (
    id          BIGSERIAL PRIMARY KEY,
    url         TEXT NOT NULL UNIQUE,
    -- JSON list of branch patterns; [] means the repository's default branch
    branches    TEXT NOT NULL,
    every_ms    BIGINT NOT NULL,
    -- 1 once a poll succeeded
    polled      BIGINT NOT NULL DEFAULT 0,
    -- polls failed in a row, the last error, and when the poller tries again
    failures    BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    retry_at    BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE pushes (
    id          BIGSERIAL PRIMARY KEY,
    -- no foreign key: a repository removed from polling keeps its pushes
    repo_id     BIGINT,
    repository  TEXT NOT NULL,
    branch      TEXT NOT NULL,
    revision    TEXT NOT NULL,
    -- the previous push on the branch and its revision (changed files are relative to it)
    previous    BIGINT,
    base        TEXT,
    graph_id    BIGINT NOT NULL REFERENCES graphs (id),
    -- the full graph the decision job submitted (JSON, with the jobs left out); NULL before
    spec        TEXT,
    created_at  BIGINT NOT NULL,
    -- one push per head, whatever restarts or concurrent pollers do
    UNIQUE (repository, branch, revision)
);
CREATE INDEX pushes_graph ON pushes (graph_id);
CREATE INDEX pushes_repo ON pushes (repo_id);

-- 1: the job starts once all its needs finished, whatever their result (requires: all-finished)
ALTER TABLE jobs ADD COLUMN all_finished BIGINT NOT NULL DEFAULT 0;
