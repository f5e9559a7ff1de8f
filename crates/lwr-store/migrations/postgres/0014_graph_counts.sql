-- lwr schema 14: each graph's jobs counted by state, and when its first run started and its
-- last run ended, so a listing of graphs reads one row per graph however many jobs it holds.
-- Kept by triggers in the very statements that change jobs and runs: no writer (the queue,
-- retention, an older release's server) can forget them. Runs are deleted only with their
-- graph (retention), so the times are never taken back; a graph being removed is not shown.
CREATE TABLE graph_counts (
    graph_id     BIGINT PRIMARY KEY,
    pending      BIGINT NOT NULL DEFAULT 0,
    running      BIGINT NOT NULL DEFAULT 0,
    succeeded    BIGINT NOT NULL DEFAULT 0,
    failed       BIGINT NOT NULL DEFAULT 0,
    exception    BIGINT NOT NULL DEFAULT 0,
    blocked      BIGINT NOT NULL DEFAULT 0,
    cancelled    BIGINT NOT NULL DEFAULT 0,
    -- the earliest start and the latest finish of any run of the graph's jobs
    first_start  BIGINT,
    last_end     BIGINT
);

INSERT INTO graph_counts (graph_id, pending, running, succeeded, failed, exception, blocked,
    cancelled, first_start, last_end)
SELECT g.id,
    COUNT(*) FILTER (WHERE j.state = 'pending'),
    COUNT(*) FILTER (WHERE j.state = 'running'),
    COUNT(*) FILTER (WHERE j.state = 'succeeded'),
    COUNT(*) FILTER (WHERE j.state = 'failed'),
    COUNT(*) FILTER (WHERE j.state = 'exception'),
    COUNT(*) FILTER (WHERE j.state = 'blocked'),
    COUNT(*) FILTER (WHERE j.state = 'cancelled'),
    (SELECT MIN(r.started_at) FROM jobs j2 JOIN runs r ON r.job_id = j2.id
        WHERE j2.graph_id = g.id),
    (SELECT MAX(r.finished_at) FROM jobs j2 JOIN runs r ON r.job_id = j2.id
        WHERE j2.graph_id = g.id)
FROM graphs g LEFT JOIN jobs j ON j.graph_id = g.id GROUP BY g.id;

CREATE FUNCTION lwr_graph_counts_graph_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO graph_counts (graph_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_graph_in AFTER INSERT ON graphs
    FOR EACH ROW EXECUTE FUNCTION lwr_graph_counts_graph_in();

CREATE FUNCTION lwr_graph_counts_graph_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM graph_counts WHERE graph_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_graph_out AFTER DELETE ON graphs
    FOR EACH ROW EXECUTE FUNCTION lwr_graph_counts_graph_out();

-- Jobs change many rows a statement (a graph's insert, a claim, a cancel): one trigger call
-- per statement, adding up its rows by graph (transition tables), writes each graph's row
-- once.
CREATE FUNCTION lwr_graph_counts_jobs_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE graph_counts c SET
        pending = c.pending + d.pending, running = c.running + d.running,
        succeeded = c.succeeded + d.succeeded, failed = c.failed + d.failed,
        exception = c.exception + d.exception, blocked = c.blocked + d.blocked,
        cancelled = c.cancelled + d.cancelled
    FROM (SELECT graph_id,
            COUNT(*) FILTER (WHERE state = 'pending') AS pending,
            COUNT(*) FILTER (WHERE state = 'running') AS running,
            COUNT(*) FILTER (WHERE state = 'succeeded') AS succeeded,
            COUNT(*) FILTER (WHERE state = 'failed') AS failed,
            COUNT(*) FILTER (WHERE state = 'exception') AS exception,
            COUNT(*) FILTER (WHERE state = 'blocked') AS blocked,
            COUNT(*) FILTER (WHERE state = 'cancelled') AS cancelled
        FROM added GROUP BY graph_id) d
    WHERE c.graph_id = d.graph_id;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_jobs_in AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_jobs_in();

CREATE FUNCTION lwr_graph_counts_jobs_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE graph_counts c SET
        pending = c.pending - d.pending, running = c.running - d.running,
        succeeded = c.succeeded - d.succeeded, failed = c.failed - d.failed,
        exception = c.exception - d.exception, blocked = c.blocked - d.blocked,
        cancelled = c.cancelled - d.cancelled
    FROM (SELECT graph_id,
            COUNT(*) FILTER (WHERE state = 'pending') AS pending,
            COUNT(*) FILTER (WHERE state = 'running') AS running,
            COUNT(*) FILTER (WHERE state = 'succeeded') AS succeeded,
            COUNT(*) FILTER (WHERE state = 'failed') AS failed,
            COUNT(*) FILTER (WHERE state = 'exception') AS exception,
            COUNT(*) FILTER (WHERE state = 'blocked') AS blocked,
            COUNT(*) FILTER (WHERE state = 'cancelled') AS cancelled
        FROM removed GROUP BY graph_id) d
    WHERE c.graph_id = d.graph_id;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_jobs_out AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_jobs_out();

-- Transition tables rule out `UPDATE OF state`: every update of jobs calls this, and one
-- that changes no state (`unmet`, `keep`) finds nothing to write.
CREATE FUNCTION lwr_graph_counts_jobs_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE graph_counts c SET
        pending = c.pending + d.pending, running = c.running + d.running,
        succeeded = c.succeeded + d.succeeded, failed = c.failed + d.failed,
        exception = c.exception + d.exception, blocked = c.blocked + d.blocked,
        cancelled = c.cancelled + d.cancelled
    FROM (SELECT n.graph_id,
            COUNT(*) FILTER (WHERE n.state = 'pending')
                - COUNT(*) FILTER (WHERE o.state = 'pending') AS pending,
            COUNT(*) FILTER (WHERE n.state = 'running')
                - COUNT(*) FILTER (WHERE o.state = 'running') AS running,
            COUNT(*) FILTER (WHERE n.state = 'succeeded')
                - COUNT(*) FILTER (WHERE o.state = 'succeeded') AS succeeded,
            COUNT(*) FILTER (WHERE n.state = 'failed')
                - COUNT(*) FILTER (WHERE o.state = 'failed') AS failed,
            COUNT(*) FILTER (WHERE n.state = 'exception')
                - COUNT(*) FILTER (WHERE o.state = 'exception') AS exception,
            COUNT(*) FILTER (WHERE n.state = 'blocked')
                - COUNT(*) FILTER (WHERE o.state = 'blocked') AS blocked,
            COUNT(*) FILTER (WHERE n.state = 'cancelled')
                - COUNT(*) FILTER (WHERE o.state = 'cancelled') AS cancelled
        FROM after_rows n JOIN before_rows o ON o.id = n.id
        WHERE n.state <> o.state GROUP BY n.graph_id) d
    WHERE c.graph_id = d.graph_id;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_jobs_state AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_jobs_state();

-- The row is written only when a time moves: a graph's later runs start after its first.
CREATE FUNCTION lwr_graph_counts_runs_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE graph_counts c SET
        first_start = LEAST(c.first_start, d.first_start),
        last_end = GREATEST(c.last_end, d.last_end)
    FROM (SELECT j.graph_id, MIN(r.started_at) AS first_start, MAX(r.finished_at) AS last_end
        FROM added r JOIN jobs j ON j.id = r.job_id GROUP BY j.graph_id) d
    WHERE c.graph_id = d.graph_id
        AND (c.first_start IS DISTINCT FROM LEAST(c.first_start, d.first_start)
            OR c.last_end IS DISTINCT FROM GREATEST(c.last_end, d.last_end));
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_runs_in AFTER INSERT ON runs
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_runs_in();

-- A row trigger with a column list: heartbeats (which update leases) never call it.
CREATE FUNCTION lwr_graph_counts_run_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE graph_counts SET last_end = NEW.finished_at
    WHERE graph_id = (SELECT graph_id FROM jobs WHERE id = NEW.job_id)
        AND (last_end IS NULL OR last_end < NEW.finished_at);
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_run_end AFTER UPDATE OF finished_at ON runs
    FOR EACH ROW WHEN (NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION lwr_graph_counts_run_end();
