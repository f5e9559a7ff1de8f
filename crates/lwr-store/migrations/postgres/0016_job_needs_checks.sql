-- lwr schema 16 (PostgreSQL): job_needs without its two foreign keys, which took more than
-- half of PostgreSQL's time for a 100,000-job graph: each of its ~200,000 edges ran two
-- key checks that each lock a job row (FOR KEY SHARE, a WAL record). What they guarded
-- is kept another way:
-- - an edge names only jobs that exist: the store inserts a job's edges in the transaction
--   that inserts the job, after looking up the needed jobs stored before it, and refuses
--   the submission if one is missing;
-- - a job named by an edge is not deleted: the statement trigger below refuses, as the
--   foreign keys did (retention and a failed staging delete a job's edges first).
-- Additive for older releases: they never relied on the keys, and get the same refusal.
ALTER TABLE job_needs DROP CONSTRAINT IF EXISTS job_needs_job_id_fkey;
ALTER TABLE job_needs DROP CONSTRAINT IF EXISTS job_needs_need_id_fkey;

CREATE FUNCTION lwr_job_needs_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM removed r JOIN job_needs n ON n.job_id = r.id)
        OR EXISTS (SELECT 1 FROM removed r JOIN job_needs n ON n.need_id = r.id) THEN
        RAISE EXCEPTION 'a deleted job is still named in job_needs'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_needs_kept AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION lwr_job_needs_kept();
