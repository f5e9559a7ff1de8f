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
-- One B-tree, written once per success: no rowid, no second index.
CREATE TABLE job_affinity (
    repository  TEXT NOT NULL,
    branch      TEXT NOT NULL,
    name        TEXT NOT NULL,
    job_id      INTEGER NOT NULL,
    node        TEXT NOT NULL,
    PRIMARY KEY (repository, branch, name)
) WITHOUT ROWID;

-- Only the change to succeeded of a job that has run (its node) in a graph of a branch.
CREATE TRIGGER job_affinity_succeeded AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'succeeded' AND OLD.state <> 'succeeded' AND NEW.node IS NOT NULL BEGIN
    INSERT INTO job_affinity (repository, branch, name, job_id, node)
    SELECT g.repository, g.branch, NEW.name, NEW.id, NEW.node FROM graphs g
    WHERE g.id = NEW.graph_id AND g.repository IS NOT NULL AND g.branch IS NOT NULL
    ON CONFLICT (repository, branch, name) DO UPDATE SET job_id = excluded.job_id,
        node = excluded.node
    WHERE excluded.job_id >= job_affinity.job_id;
END;

-- Found by its key: retention removes a graph's jobs before the graph.
CREATE TRIGGER job_affinity_job_out AFTER DELETE ON jobs WHEN OLD.state = 'succeeded' BEGIN
    DELETE FROM job_affinity WHERE name = OLD.name AND job_id = OLD.id
        AND (repository, branch) IN (SELECT g.repository, g.branch FROM graphs g
            WHERE g.id = OLD.graph_id);
END;

-- What is stored already: for each repository, branch and name, its newest success (SQLite
-- takes the bare columns from the row of MAX).
INSERT INTO job_affinity (repository, branch, name, job_id, node)
SELECT g.repository, g.branch, j.name, MAX(j.id), j.node FROM jobs j
JOIN graphs g ON g.id = j.graph_id
WHERE j.state = 'succeeded' AND j.node IS NOT NULL AND g.repository IS NOT NULL
    AND g.branch IS NOT NULL
GROUP BY g.repository, g.branch, j.name;
