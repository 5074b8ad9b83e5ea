-- The adapter registry: versioned LoRA adapters per team, and which one each team uses now.
--
-- A version is the sha256 of the adapter's files (its first 12 hex digits are in the served name, so a
-- re-trained adapter never reuses an old one's name or a server's cache). status: 'registered' (checked,
-- not serving), 'active' (the team's current adapter: at most one per team), 'retired' (replaced or
-- withdrawn; kept for the audit trail).
CREATE TABLE adapters (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL,
    team             text NOT NULL,
    version          text NOT NULL,
    served_name      text NOT NULL UNIQUE,
    path             text NOT NULL,
    base_model       text NOT NULL,
    base_fingerprint text NOT NULL,
    rank             integer NOT NULL CHECK (rank > 0),
    target_modules   text[] NOT NULL,
    status           text NOT NULL DEFAULT 'registered' CHECK (status IN ('registered', 'active', 'retired')),
    metrics          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text NOT NULL,
    promoted_at      timestamptz,
    UNIQUE (name, version)
);
CREATE UNIQUE INDEX adapters_one_active_per_team ON adapters (team) WHERE status = 'active';

GRANT SELECT, INSERT, UPDATE ON adapters TO citeline_writer;
GRANT USAGE ON SEQUENCE adapters_id_seq TO citeline_writer;
-- the reader role (queries on behalf of users) resolves a team's adapter
GRANT SELECT ON adapters TO citeline_reader;
