-- lwr schema 18: affinity (the node that last ran a job successfully on a repository and
-- branch) is one row per repository, branch and job name, kept by triggers, so the claim
-- reads it by key. Schema 17's lookup walked the succeeded jobs of a name newest first until
-- one was of the same repository and branch: past every success of that name elsewhere, and
-- all of them when the branch had none (a new branch, a new job, a graph without a
-- repository), once per row of every claim's search.
-- Kept by triggers in the statements that change jobs, so every writer (an older release's
-- server too) keeps it. The newest job wins, as before: a retriggered older job that
-- succeeds does not displace a newer one's node. A row goes when its job goes (retention).
-- Additive: older releases do not read it, and their lookup keeps jobs_succeeded_name.
CREATE TABLE job_affinity (
    repository  TEXT NOT NULL,
    branch      TEXT NOT NULL,
    name        TEXT NOT NULL,
    job_id      BIGINT NOT NULL,
    node        TEXT NOT NULL,
    PRIMARY KEY (repository, branch, name)
);

-- A hint, not a record: a row another transaction holds is left to it (whichever commits
-- last of two successes of one name at once may win), so a claim never waits on another.
CREATE FUNCTION lwr_job_affinity_succeeded() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g RECORD;
BEGIN
    SELECT repository, branch INTO g FROM graphs WHERE id = NEW.graph_id;
    IF g.repository IS NULL OR g.branch IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM job_affinity WHERE repository = g.repository AND branch = g.branch
        AND name = NEW.name FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE job_affinity SET job_id = NEW.id, node = NEW.node
        WHERE repository = g.repository AND branch = g.branch AND name = NEW.name
            AND job_id <= NEW.id;
    ELSIF NOT EXISTS (SELECT 1 FROM job_affinity WHERE repository = g.repository
            AND branch = g.branch AND name = NEW.name) THEN
        INSERT INTO job_affinity (repository, branch, name, job_id, node)
        VALUES (g.repository, g.branch, NEW.name, NEW.id, NEW.node)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_affinity_succeeded AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.state = 'succeeded' AND OLD.state <> 'succeeded' AND NEW.node IS NOT NULL)
    EXECUTE FUNCTION lwr_job_affinity_succeeded();

-- Found by its key: retention removes a graph's jobs before the graph.
CREATE FUNCTION lwr_job_affinity_job_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_affinity a USING graphs g
    WHERE g.id = OLD.graph_id AND a.repository = g.repository AND a.branch = g.branch
        AND a.name = OLD.name AND a.job_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER job_affinity_job_out AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.state = 'succeeded') EXECUTE FUNCTION lwr_job_affinity_job_out();

-- What is stored already: for each repository, branch and name, its newest success.
INSERT INTO job_affinity (repository, branch, name, job_id, node)
SELECT DISTINCT ON (g.repository, g.branch, j.name) g.repository, g.branch, j.name, j.id,
    j.node
FROM jobs j JOIN graphs g ON g.id = j.graph_id
WHERE j.state = 'succeeded' AND j.node IS NOT NULL AND g.repository IS NOT NULL
    AND g.branch IS NOT NULL
ORDER BY g.repository, g.branch, j.name, j.id DESC;
