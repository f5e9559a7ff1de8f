-- lwr schema 4 (SQLite): access tokens. Only a token's SHA-256 is stored, never the secret.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    -- space-separated scope names
    scopes      TEXT NOT NULL,
    label       TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

-- The token a node registered with; only that token (or an admin) may act for the node.
ALTER TABLE nodes ADD COLUMN token_id INTEGER;
