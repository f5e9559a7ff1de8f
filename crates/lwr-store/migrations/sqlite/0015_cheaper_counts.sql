-- lwr schema 15: nothing on SQLite. PostgreSQL's graph_counts triggers skip changes that
-- change nothing; SQLite's row triggers (schema 14) cost the server no measurable time.
SELECT 1;
