-- lwr schema 19 (PostgreSQL): the statement trigger that keeps graph_counts over job states
-- (schema 14) joined the update's old and new rows by id. Transition tables have no
-- statistics, and the join was planned as a nested loop: one update of many jobs took time
-- in the square of their number. A build's success releasing its 10,000 tests (each loses
-- an unmet need: no state changes) held the claim carrying it for 6 s, and every other
-- claim behind it. Each row now adds one to its new state and takes one from its old
-- state, with no join: the same sums, in time linear in the rows (a job's graph never
-- changes). Only graphs whose counts moved are written, as before.

CREATE OR REPLACE FUNCTION lwr_graph_counts_jobs_state() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
BEGIN
    FOR d IN SELECT x.graph_id, SUM(x.p) AS p, SUM(x.r) AS r, SUM(x.s) AS s, SUM(x.f) AS f,
            SUM(x.e) AS e, SUM(x.b) AS b, SUM(x.c) AS c
        FROM (
            SELECT graph_id, (state = 'pending')::int AS p, (state = 'running')::int AS r,
                (state = 'succeeded')::int AS s, (state = 'failed')::int AS f,
                (state = 'exception')::int AS e, (state = 'blocked')::int AS b,
                (state = 'cancelled')::int AS c
            FROM after_rows
            UNION ALL
            SELECT graph_id, -(state = 'pending')::int, -(state = 'running')::int,
                -(state = 'succeeded')::int, -(state = 'failed')::int,
                -(state = 'exception')::int, -(state = 'blocked')::int,
                -(state = 'cancelled')::int
            FROM before_rows
        ) x
        GROUP BY x.graph_id
        HAVING SUM(x.p) <> 0 OR SUM(x.r) <> 0 OR SUM(x.s) <> 0 OR SUM(x.f) <> 0
            OR SUM(x.e) <> 0 OR SUM(x.b) <> 0 OR SUM(x.c) <> 0
        ORDER BY x.graph_id
    LOOP
        PERFORM lwr_graph_counts_add(d.graph_id, d.p, d.r, d.s, d.f, d.e, d.b, d.c, NULL, NULL);
    END LOOP;
    RETURN NULL;
END $$;
