-- lwr schema 14: each graph's jobs counted by state, and when its first run started and its
-- last run ended, so a listing of graphs reads one row per graph however many jobs it holds.
-- Kept by triggers in the very statements that change jobs and runs: no writer (the queue,
-- retention, an older release's server) can forget them. Runs are deleted only with their
-- graph (retention), so the times are never taken back; a graph being removed is not shown.
CREATE TABLE graph_counts (
    graph_id     INTEGER PRIMARY KEY,
    pending      INTEGER NOT NULL DEFAULT 0,
    running      INTEGER NOT NULL DEFAULT 0,
    succeeded    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    exception    INTEGER NOT NULL DEFAULT 0,
    blocked      INTEGER NOT NULL DEFAULT 0,
    cancelled    INTEGER NOT NULL DEFAULT 0,
    -- the earliest start and the latest finish of any run of the graph's jobs
    first_start  INTEGER,
    last_end     INTEGER
);

-- PostgreSQL's changes that could not take a graph's row without waiting (see there); with
-- a single writer, SQLite never needs it, and it stays empty: the readers are the same.
CREATE TABLE graph_count_deltas (
    graph_id     INTEGER NOT NULL,
    pending      INTEGER NOT NULL,
    running      INTEGER NOT NULL,
    succeeded    INTEGER NOT NULL,
    failed       INTEGER NOT NULL,
    exception    INTEGER NOT NULL,
    blocked      INTEGER NOT NULL,
    cancelled    INTEGER NOT NULL,
    first_start  INTEGER,
    last_end     INTEGER
);
CREATE INDEX graph_count_deltas_graph ON graph_count_deltas (graph_id);

INSERT INTO graph_counts (graph_id, pending, running, succeeded, failed, exception, blocked,
    cancelled)
SELECT g.id,
    COUNT(CASE WHEN j.state = 'pending' THEN 1 END),
    COUNT(CASE WHEN j.state = 'running' THEN 1 END),
    COUNT(CASE WHEN j.state = 'succeeded' THEN 1 END),
    COUNT(CASE WHEN j.state = 'failed' THEN 1 END),
    COUNT(CASE WHEN j.state = 'exception' THEN 1 END),
    COUNT(CASE WHEN j.state = 'blocked' THEN 1 END),
    COUNT(CASE WHEN j.state = 'cancelled' THEN 1 END)
FROM graphs g LEFT JOIN jobs j ON j.graph_id = g.id GROUP BY g.id;

UPDATE graph_counts SET
    first_start = (SELECT MIN(r.started_at) FROM jobs j JOIN runs r ON r.job_id = j.id
        WHERE j.graph_id = graph_counts.graph_id),
    last_end = (SELECT MAX(r.finished_at) FROM jobs j JOIN runs r ON r.job_id = j.id
        WHERE j.graph_id = graph_counts.graph_id);

CREATE TRIGGER graph_counts_graph_in AFTER INSERT ON graphs BEGIN
    INSERT INTO graph_counts (graph_id) VALUES (NEW.id);
END;

CREATE TRIGGER graph_counts_graph_out AFTER DELETE ON graphs BEGIN
    DELETE FROM graph_counts WHERE graph_id = OLD.id;
END;

CREATE TRIGGER graph_counts_job_in AFTER INSERT ON jobs BEGIN
    UPDATE graph_counts SET
        pending = pending + (NEW.state = 'pending'),
        running = running + (NEW.state = 'running'),
        succeeded = succeeded + (NEW.state = 'succeeded'),
        failed = failed + (NEW.state = 'failed'),
        exception = exception + (NEW.state = 'exception'),
        blocked = blocked + (NEW.state = 'blocked'),
        cancelled = cancelled + (NEW.state = 'cancelled')
    WHERE graph_id = NEW.graph_id;
END;

-- Only a change of state: `unmet`, `keep` and the like cost nothing.
CREATE TRIGGER graph_counts_job_state AFTER UPDATE OF state ON jobs
WHEN OLD.state <> NEW.state BEGIN
    UPDATE graph_counts SET
        pending = pending + (NEW.state = 'pending') - (OLD.state = 'pending'),
        running = running + (NEW.state = 'running') - (OLD.state = 'running'),
        succeeded = succeeded + (NEW.state = 'succeeded') - (OLD.state = 'succeeded'),
        failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
        exception = exception + (NEW.state = 'exception') - (OLD.state = 'exception'),
        blocked = blocked + (NEW.state = 'blocked') - (OLD.state = 'blocked'),
        cancelled = cancelled + (NEW.state = 'cancelled') - (OLD.state = 'cancelled')
    WHERE graph_id = NEW.graph_id;
END;

CREATE TRIGGER graph_counts_job_out AFTER DELETE ON jobs BEGIN
    UPDATE graph_counts SET
        pending = pending - (OLD.state = 'pending'),
        running = running - (OLD.state = 'running'),
        succeeded = succeeded - (OLD.state = 'succeeded'),
        failed = failed - (OLD.state = 'failed'),
        exception = exception - (OLD.state = 'exception'),
        blocked = blocked - (OLD.state = 'blocked'),
        cancelled = cancelled - (OLD.state = 'cancelled')
    WHERE graph_id = OLD.graph_id;
END;

-- The row is written only when a time moves: a graph's later runs start after its first.
CREATE TRIGGER graph_counts_run_in AFTER INSERT ON runs BEGIN
    UPDATE graph_counts SET
        first_start = MIN(COALESCE(first_start, NEW.started_at), NEW.started_at),
        last_end = MAX(COALESCE(last_end, NEW.finished_at), COALESCE(NEW.finished_at, last_end))
    WHERE graph_id = (SELECT graph_id FROM jobs WHERE id = NEW.job_id)
        AND (first_start IS NULL OR first_start > NEW.started_at
            OR NEW.finished_at > COALESCE(last_end, NEW.finished_at - 1));
END;

CREATE TRIGGER graph_counts_run_end AFTER UPDATE OF finished_at ON runs
WHEN NEW.finished_at IS NOT NULL BEGIN
    UPDATE graph_counts SET last_end = NEW.finished_at
    WHERE graph_id = (SELECT graph_id FROM jobs WHERE id = NEW.job_id)
        AND (last_end IS NULL OR last_end < NEW.finished_at);
END;
