-- lwr schema 5 (SQLite): the pool. Node state and health, why each run went to its node,
-- and an index to find where each job last succeeded (affinity).

-- enabled | disabled | quarantined | draining (lost is seen from last_seen, never stored)
ALTER TABLE nodes ADD COLUMN state TEXT NOT NULL DEFAULT 'enabled';
-- who or what set the state, for listings
ALTER TABLE nodes ADD COLUMN state_reason TEXT;
-- JSON map of tags an operator set (`lwr nodes label`); they win over the node's own and
-- survive its registering again
ALTER TABLE nodes ADD COLUMN labels TEXT;
-- why the node's own health check fails (`lwr node --health-check`); NULL: healthy
ALTER TABLE nodes ADD COLUMN health TEXT;
-- its latest runs that ended in an infrastructure error, in a row; reset by any other end
ALTER TABLE nodes ADD COLUMN infra_errors INTEGER NOT NULL DEFAULT 0;

-- why the run went to its node ("affinity: last success of build on main")
ALTER TABLE runs ADD COLUMN placement TEXT;

-- JSON {prefer, affinity_wait_secs}; NULL for the defaults (the common, fast case)
ALTER TABLE jobs ADD COLUMN placement TEXT;
-- 1: the last run ended in an infrastructure error on a spot node; retry on a non-spot one
ALTER TABLE jobs ADD COLUMN avoid_spot INTEGER NOT NULL DEFAULT 0;

-- Affinity (the node that last ran a job successfully on a repository and branch) is read
-- from the jobs themselves: their names, newest first, say where each last succeeded. No
-- write per success; the name never changes, so no state change touches this index.
CREATE INDEX jobs_name ON jobs (name, id);
