-- lwr schema 19: nothing on SQLite, whose graph_counts triggers are row triggers (schema 14)
-- and cost the same for each row an update changes.
SELECT 1;
