-- lwr schema 4 (PostgreSQL): access tokens. Only a token's SHA-256 is stored, never the secret.
CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    -- space-separated scope names
    scopes      TEXT NOT NULL,
    label       TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

-- The token a node registered with; only that token (or an admin) may act for the node.
ALTER TABLE nodes ADD COLUMN token_id BIGINT;
