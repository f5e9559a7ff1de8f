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

-- What a transaction could not add to a graph's row without waiting: another transaction
-- holds that row until it commits (a claim, a result). Waiting on it mid-transaction, while
-- holding job rows, deadlocks against claims and results of other servers; so a trigger takes
-- the row only if it is free (SKIP LOCKED), and otherwise appends its change here. Whoever
-- holds the row next folds these in. A graph's counts are its row plus its deltas.
CREATE TABLE graph_count_deltas (
    graph_id     BIGINT NOT NULL,
    pending      BIGINT NOT NULL,
    running      BIGINT NOT NULL,
    succeeded    BIGINT NOT NULL,
    failed       BIGINT NOT NULL,
    exception    BIGINT NOT NULL,
    blocked      BIGINT NOT NULL,
    cancelled    BIGINT NOT NULL,
    first_start  BIGINT,
    last_end     BIGINT
);
CREATE INDEX graph_count_deltas_graph ON graph_count_deltas (graph_id);

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

-- Adds a change to graph g: to its row when this transaction can take it without waiting,
-- folding in the deltas others left; else as a delta row.
CREATE FUNCTION lwr_graph_counts_add(g BIGINT, dp BIGINT, dr BIGINT, ds BIGINT, df BIGINT,
    de BIGINT, db BIGINT, dc BIGINT, fs BIGINT, le BIGINT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f RECORD;
BEGIN
    PERFORM 1 FROM graph_counts WHERE graph_id = g FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM graph_counts WHERE graph_id = g) THEN
            INSERT INTO graph_count_deltas VALUES (g, dp, dr, ds, df, de, db, dc, fs, le);
        END IF;
        RETURN;
    END IF;
    WITH folded AS (DELETE FROM graph_count_deltas WHERE graph_id = g RETURNING *)
    SELECT COALESCE(SUM(pending), 0) AS p, COALESCE(SUM(running), 0) AS r,
        COALESCE(SUM(succeeded), 0) AS s, COALESCE(SUM(failed), 0) AS f,
        COALESCE(SUM(exception), 0) AS e, COALESCE(SUM(blocked), 0) AS b,
        COALESCE(SUM(cancelled), 0) AS c, MIN(first_start) AS fs, MAX(last_end) AS le
    INTO f FROM folded;
    UPDATE graph_counts SET
        pending = pending + dp + f.p, running = running + dr + f.r,
        succeeded = succeeded + ds + f.s, failed = failed + df + f.f,
        exception = exception + de + f.e, blocked = blocked + db + f.b,
        cancelled = cancelled + dc + f.c,
        first_start = LEAST(first_start, fs, f.fs), last_end = GREATEST(last_end, le, f.le)
    WHERE graph_id = g;
END $$;

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
    DELETE FROM graph_count_deltas WHERE graph_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_graph_out AFTER DELETE ON graphs
    FOR EACH ROW EXECUTE FUNCTION lwr_graph_counts_graph_out();

-- Jobs change many rows a statement (a graph's insert, a claim, a cancel): one trigger call
-- per statement adds up its rows by graph (transition tables).
CREATE FUNCTION lwr_graph_counts_jobs_in() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    FOR d IN SELECT graph_id,
            COUNT(*) FILTER (WHERE state = 'pending') AS p,
            COUNT(*) FILTER (WHERE state = 'running') AS r,
            COUNT(*) FILTER (WHERE state = 'succeeded') AS s,
            COUNT(*) FILTER (WHERE state = 'failed') AS f,
            COUNT(*) FILTER (WHERE state = 'exception') AS e,
            COUNT(*) FILTER (WHERE state = 'blocked') AS b,
            COUNT(*) FILTER (WHERE state = 'cancelled') AS c
        FROM added GROUP BY graph_id ORDER BY graph_id
    LOOP
        PERFORM lwr_graph_counts_add(d.graph_id, d.p, d.r, d.s, d.f, d.e, d.b, d.c, NULL, NULL);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_jobs_in AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_jobs_in();

CREATE FUNCTION lwr_graph_counts_jobs_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    FOR d IN SELECT graph_id,
            COUNT(*) FILTER (WHERE state = 'pending') AS p,
            COUNT(*) FILTER (WHERE state = 'running') AS r,
            COUNT(*) FILTER (WHERE state = 'succeeded') AS s,
            COUNT(*) FILTER (WHERE state = 'failed') AS f,
            COUNT(*) FILTER (WHERE state = 'exception') AS e,
            COUNT(*) FILTER (WHERE state = 'blocked') AS b,
            COUNT(*) FILTER (WHERE state = 'cancelled') AS c
        FROM removed GROUP BY graph_id ORDER BY graph_id
    LOOP
        PERFORM lwr_graph_counts_add(d.graph_id, -d.p, -d.r, -d.s, -d.f, -d.e, -d.b, -d.c,
            NULL, NULL);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_jobs_out AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_jobs_out();

-- Transition tables rule out `UPDATE OF state`: every update of jobs calls this, and one
-- that changes no state (`unmet`, `keep`) finds nothing to add.
CREATE FUNCTION lwr_graph_counts_jobs_state() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    FOR d IN SELECT n.graph_id,
            COUNT(*) FILTER (WHERE n.state = 'pending')
                - COUNT(*) FILTER (WHERE o.state = 'pending') AS p,
            COUNT(*) FILTER (WHERE n.state = 'running')
                - COUNT(*) FILTER (WHERE o.state = 'running') AS r,
            COUNT(*) FILTER (WHERE n.state = 'succeeded')
                - COUNT(*) FILTER (WHERE o.state = 'succeeded') AS s,
            COUNT(*) FILTER (WHERE n.state = 'failed')
                - COUNT(*) FILTER (WHERE o.state = 'failed') AS f,
            COUNT(*) FILTER (WHERE n.state = 'exception')
                - COUNT(*) FILTER (WHERE o.state = 'exception') AS e,
            COUNT(*) FILTER (WHERE n.state = 'blocked')
                - COUNT(*) FILTER (WHERE o.state = 'blocked') AS b,
            COUNT(*) FILTER (WHERE n.state = 'cancelled')
                - COUNT(*) FILTER (WHERE o.state = 'cancelled') AS c
        FROM after_rows n JOIN before_rows o ON o.id = n.id
        WHERE n.state <> o.state GROUP BY n.graph_id ORDER BY n.graph_id
    LOOP
        PERFORM lwr_graph_counts_add(d.graph_id, d.p, d.r, d.s, d.f, d.e, d.b, d.c, NULL, NULL);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_jobs_state AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_jobs_state();

CREATE FUNCTION lwr_graph_counts_runs_in() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    FOR d IN SELECT j.graph_id, MIN(r.started_at) AS fs, MAX(r.finished_at) AS le
        FROM added r JOIN jobs j ON j.id = r.job_id GROUP BY j.graph_id ORDER BY j.graph_id
    LOOP
        PERFORM lwr_graph_counts_add(d.graph_id, 0, 0, 0, 0, 0, 0, 0, d.fs, d.le);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_runs_in AFTER INSERT ON runs
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_graph_counts_runs_in();

-- A row trigger with a column list: heartbeats (which update leases) never call it.
CREATE FUNCTION lwr_graph_counts_run_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lwr_graph_counts_add((SELECT graph_id FROM jobs WHERE id = NEW.job_id),
        0, 0, 0, 0, 0, 0, 0, NULL, NEW.finished_at);
    RETURN NULL;
END $$;
CREATE TRIGGER graph_counts_run_end AFTER UPDATE OF finished_at ON runs
    FOR EACH ROW WHEN (NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION lwr_graph_counts_run_end();
