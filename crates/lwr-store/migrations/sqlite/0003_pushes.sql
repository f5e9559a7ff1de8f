-- lwr schema 3 (SQLite): polled repositories, pushes, and jobs that wait for their needs to
-- finish whatever the result. Times are milliseconds since the Unix epoch.
CREATE TABLE repos (
    id          INTEGER PRIMARY KEY,
    url         TEXT NOT NULL UNIQUE,
    -- JSON list of branch patterns; [] means the repository's default branch
    branches    TEXT NOT NULL,
    every_ms    INTEGER NOT NULL,
    -- 1 once a poll succeeded
    polled      INTEGER NOT NULL DEFAULT 0,
    -- polls failed in a row, the last error, and when the poller tries again
    failures    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    retry_at    INTEGER,
    created_at  INTEGER NOT NULL
);

CREATE TABLE pushes (
    id          INTEGER PRIMARY KEY,
    -- no foreign key: a repository removed from polling keeps its pushes
    repo_id     INTEGER,
    repository  TEXT NOT NULL,
    branch      TEXT NOT NULL,
    revision    TEXT NOT NULL,
    -- the previous push on the branch and its revision (changed files are relative to it)
    previous    INTEGER,
    base        TEXT,
    graph_id    INTEGER NOT NULL REFERENCES graphs (id),
    -- the full graph the decision job submitted (JSON, with the jobs left out); NULL before
    spec        TEXT,
    created_at  INTEGER NOT NULL,
    -- one push per head, whatever restarts or concurrent pollers do
    UNIQUE (repository, branch, revision)
);
CREATE INDEX pushes_graph ON pushes (graph_id);
CREATE INDEX pushes_repo ON pushes (repo_id);

-- 1: the job starts once all its needs finished, whatever their result (requires: all-finished)
ALTER TABLE jobs ADD COLUMN all_finished INTEGER NOT NULL DEFAULT 0;
