-- lwr schema 15 (PostgreSQL): the graph_counts triggers of schema 14 skip a change that
-- changes nothing. Each lwr_graph_counts_add locks, rewrites and logs the graph's row; a
-- claim and its report called it up to seven times for four jobs, and the load generator
-- lost a fifth of its throughput. A run's start rarely moves the graph's first start (only
-- its first run does), and a report of several runs moves the last end once. The kept times
-- only ever move outwards (LEAST, GREATEST) and the row is read as this statement sees it:
-- if the kept time already covers the new one, row plus deltas already do too.

CREATE OR REPLACE FUNCTION lwr_graph_counts_runs_in() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    FOR d IN SELECT j.graph_id, MIN(r.started_at) AS fs, MAX(r.finished_at) AS le
        FROM added r JOIN jobs j ON j.id = r.job_id GROUP BY j.graph_id ORDER BY j.graph_id
    LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM graph_counts c WHERE c.graph_id = d.graph_id
            AND c.first_start <= d.fs AND (d.le IS NULL OR c.last_end >= d.le));
        PERFORM lwr_graph_counts_add(d.graph_id, 0, 0, 0, 0, 0, 0, 0, d.fs, d.le);
    END LOOP;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION lwr_graph_counts_run_end() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g BIGINT;
BEGIN
    SELECT graph_id INTO g FROM jobs WHERE id = NEW.job_id;
    IF EXISTS (SELECT 1 FROM graph_counts WHERE graph_id = g
            AND last_end >= NEW.finished_at) THEN
        RETURN NULL;
    END IF;
    PERFORM lwr_graph_counts_add(g, 0, 0, 0, 0, 0, 0, 0, NULL, NEW.finished_at);
    RETURN NULL;
END $$;

-- The same change to a graph's counts in fewer statements: taking the row and adding to it
-- is one UPDATE (as the claim's search takes jobs), and the deltas are folded only when
-- there are any (the common case has none).
CREATE OR REPLACE FUNCTION lwr_graph_counts_add(g BIGINT, dp BIGINT, dr BIGINT, ds BIGINT,
    df BIGINT, de BIGINT, db BIGINT, dc BIGINT, fs BIGINT, le BIGINT) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    f RECORD;
BEGIN
    UPDATE graph_counts SET
        pending = pending + dp, running = running + dr, succeeded = succeeded + ds,
        failed = failed + df, exception = exception + de, blocked = blocked + db,
        cancelled = cancelled + dc,
        first_start = LEAST(first_start, fs), last_end = GREATEST(last_end, le)
    WHERE graph_id = (SELECT graph_id FROM graph_counts WHERE graph_id = g
        FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM graph_counts WHERE graph_id = g) THEN
            INSERT INTO graph_count_deltas VALUES (g, dp, dr, ds, df, de, db, dc, fs, le);
        END IF;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM graph_count_deltas WHERE graph_id = g) THEN
        RETURN;
    END IF;
    WITH folded AS (DELETE FROM graph_count_deltas WHERE graph_id = g RETURNING *)
    SELECT COALESCE(SUM(pending), 0) AS p, COALESCE(SUM(running), 0) AS r,
        COALESCE(SUM(succeeded), 0) AS s, COALESCE(SUM(failed), 0) AS f,
        COALESCE(SUM(exception), 0) AS e, COALESCE(SUM(blocked), 0) AS b,
        COALESCE(SUM(cancelled), 0) AS c, MIN(first_start) AS fs, MAX(last_end) AS le
    INTO f FROM folded;
    UPDATE graph_counts SET
        pending = pending + f.p, running = running + f.r, succeeded = succeeded + f.s,
        failed = failed + f.f, exception = exception + f.e, blocked = blocked + f.b,
        cancelled = cancelled + f.c,
        first_start = LEAST(first_start, f.fs), last_end = GREATEST(last_end, f.le)
    WHERE graph_id = g;
END $$;
