-- lwr schema 10: bounded growth. A large graph is inserted in several transactions and is
-- "staging" until its last job is in (claims and listings skip it); `keep` marks a graph or a
-- job the retention pass must leave; a graph's jobs are paged in id order.
ALTER TABLE graphs ADD COLUMN staging INTEGER NOT NULL DEFAULT 0;
ALTER TABLE graphs ADD COLUMN keep INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN keep INTEGER NOT NULL DEFAULT 0;
CREATE INDEX graphs_staging ON graphs (id) WHERE staging <> 0;
CREATE INDEX jobs_graph ON jobs (graph_id, id);
