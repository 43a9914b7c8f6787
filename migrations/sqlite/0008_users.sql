-- The people who work the console (CONTRACT.md "Care records"): operators, supervisors,
-- admins and installers, each with their own login, and the bearer tokens logins hand out.

-- role: operator | supervisor | admin | installer. regions: JSON array of region ids (the
-- scope a later step enforces). password_hash: an Argon2id PHC string, never the password.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    login         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    regions       TEXT NOT NULL DEFAULT '[]',
    password_hash TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- A login's token, kept only as its SHA-256 (hex): a copy of this table logs nobody in.
CREATE TABLE user_tokens (
    token_sha256 TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX user_tokens_expiry ON user_tokens (expires_at);
