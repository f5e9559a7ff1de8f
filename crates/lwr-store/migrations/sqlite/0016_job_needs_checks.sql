-- lwr schema 16: nothing on SQLite, whose foreign keys on job_needs cost little (no row
-- locks); PostgreSQL's were replaced by cheaper checks.
SELECT 1;
