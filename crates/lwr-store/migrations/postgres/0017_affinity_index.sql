-- lwr schema 17: affinity (the node that last ran a job successfully on a repository and
-- branch) is looked up in an index of succeeded jobs only, by name, newest first. jobs_name
-- held every job: the claim's lookup walked past every pending and running job of the same
-- name before it found a success, so with a backlog of one job (many pushes of one
-- repository) each claim read the backlog once per row of its search. A job enters this
-- index when it succeeds and never leaves it.
-- Additive for older releases: their lookup names state = 'succeeded' and uses this index
-- as well; jobs_name, which nothing else reads, no longer costs each insert.
CREATE INDEX jobs_succeeded_name ON jobs (name, id) WHERE state = 'succeeded';
DROP INDEX IF EXISTS jobs_name;
