-- lwr schema 8: every job builds its commit. A graph remembers the revision of the previous
-- push on its repository and branch (what the jobs get as LWR_BASE_REVISION), found through
-- an index that also serves the look-up of a job's last node (affinity).
ALTER TABLE graphs ADD COLUMN base TEXT;
CREATE INDEX graphs_branch ON graphs (repository, branch, id);
