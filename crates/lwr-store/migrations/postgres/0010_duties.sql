-- lwr schema 10: duties that one server of those sharing a database does at a time (the
-- provider's scaler, the lease and artifact sweeps, repository polling). A row is a lease:
-- `holder` does the duty until `expires_at` (ms since the epoch) unless it renews; another
-- server takes it over only once it has expired. `epoch` grows at each change of holder;
-- `counter` is the duty's own sequence (the provider numbers the nodes it starts with it).
CREATE TABLE duties (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    epoch       BIGINT NOT NULL DEFAULT 1,
    counter     BIGINT NOT NULL DEFAULT 0
);
