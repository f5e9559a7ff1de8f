-- lwr schema 6: settings the servers sharing a database share, e.g. the key that signs the
-- short-lived tokens jobs get (so any server can check a token another one handed out).
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
