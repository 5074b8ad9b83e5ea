-- Serving: API keys, and an audit log that the application roles can only append to.

-- An API key is "cl_<key_id>_<secret>"; only sha256(secret) is stored. key_id is public (it names the
-- key in listings and audit rows); the secret never reaches the database or the logs.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    key_id      text NOT NULL UNIQUE,
    secret_hash text NOT NULL,
    user_id     text NOT NULL,
    is_admin    boolean NOT NULL DEFAULT false,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);

GRANT SELECT, INSERT, UPDATE ON api_keys TO citeline_writer;
GRANT USAGE ON SEQUENCE api_keys_id_seq TO citeline_writer;

-- Append-only: the reader role (queries on behalf of users) no longer writes audit rows; the writer
-- may insert and read but never update or delete. Edits by the schema owner are what
-- `citeline audit verify` detects through the hash chain.
REVOKE INSERT ON audit_log FROM citeline_reader;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM citeline_writer, citeline_reader;
CREATE INDEX audit_log_at ON audit_log (at);
