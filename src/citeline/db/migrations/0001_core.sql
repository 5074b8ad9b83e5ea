-- citeline core schema. Runs with search_path set to the namespace schema.
-- __EMBEDDING_DIM__ and __TS_CONFIG__ are replaced by validated values before this runs.

CREATE TABLE index_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO index_meta (key, value) VALUES
    ('embedding_dim', '__EMBEDDING_DIM__'),
    ('text_search_config', '__TS_CONFIG__');

CREATE TABLE sources (
    id            serial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    connector     text NOT NULL,
    -- checkpoint of an unfinished sync; NULL once a sync completed
    cursor        jsonb,
    last_success_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id                bigserial PRIMARY KEY,
    source_id         int NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    external_id       text NOT NULL,
    url               text,
    title             text NOT NULL DEFAULT '',
    content_hash      text NOT NULL,
    acl               text[] NOT NULL DEFAULT '{}',
    public            boolean NOT NULL DEFAULT false,
    access            jsonb NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}',
    source_updated_at timestamptz,
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    indexed_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, external_id)
);
CREATE INDEX documents_acl_idx ON documents USING gin (acl);

CREATE TABLE chunks (
    id          bigserial PRIMARY KEY,
    document_id bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal     int NOT NULL,
    heading     text NOT NULL DEFAULT '',
    text        text NOT NULL,
    span_start  int,
    span_end    int,
    -- access is denormalised from the document so the row-level policy filters inside the index scan
    acl         text[] NOT NULL DEFAULT '{}',
    public      boolean NOT NULL DEFAULT false,
    embedding   vector(__EMBEDDING_DIM__) NOT NULL,
    tsv         tsvector NOT NULL,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX chunks_tsv_gin ON chunks USING gin (tsv);
CREATE INDEX chunks_acl_gin ON chunks USING gin (acl);
CREATE INDEX chunks_document_idx ON chunks (document_id);

CREATE TABLE principals (
    user_id    text PRIMARY KEY,
    groups     text[] NOT NULL DEFAULT '{}',
    team       text,
    -- 'u:<user>' and 'g:<group>' tokens matched against chunks.acl
    tokens     text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sync_runs (
    id            bigserial PRIMARY KEY,
    source_id     int NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    status        text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    resumed_from  jsonb,
    cursor        jsonb,
    added         int NOT NULL DEFAULT 0,
    updated       int NOT NULL DEFAULT 0,
    unchanged     int NOT NULL DEFAULT 0,
    deleted       int NOT NULL DEFAULT 0,
    failed        int NOT NULL DEFAULT 0,
    chunks        int NOT NULL DEFAULT 0,
    error         text,
    pid           int
);
CREATE INDEX sync_runs_source_idx ON sync_runs (source_id, started_at DESC);

CREATE TABLE sync_failures (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    external_id text NOT NULL,
    reason      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

-- Append-only, hash-chained: each row's hash covers its content and the previous row's hash.
CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind      text NOT NULL,
    principal text,
    team      text,
    action    text NOT NULL,
    payload   jsonb NOT NULL DEFAULT '{}',
    prev_hash text NOT NULL,
    hash      text NOT NULL UNIQUE
);

-- Row-level security. The reader sees a chunk or document only if it is public or its ACL shares a
-- token with the principal named by the transaction-local setting citeline.user. An unknown or
-- unset principal matches no tokens (fail closed). The writer (ingest, admin) sees everything.
ALTER TABLE chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE chunks FORCE ROW LEVEL SECURITY;
ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents FORCE ROW LEVEL SECURITY;
ALTER TABLE principals ENABLE ROW LEVEL SECURITY;
ALTER TABLE principals FORCE ROW LEVEL SECURITY;

CREATE POLICY principals_self ON principals FOR SELECT TO citeline_reader
    USING (user_id = current_setting('citeline.user', true));
CREATE POLICY principals_writer ON principals FOR ALL TO citeline_writer USING (true) WITH CHECK (true);

CREATE POLICY chunks_reader ON chunks FOR SELECT TO citeline_reader
    USING (public OR acl && (SELECT p.tokens FROM principals p
                             WHERE p.user_id = current_setting('citeline.user', true)));
CREATE POLICY chunks_writer ON chunks FOR ALL TO citeline_writer USING (true) WITH CHECK (true);

CREATE POLICY documents_reader ON documents FOR SELECT TO citeline_reader
    USING (public OR acl && (SELECT p.tokens FROM principals p
                             WHERE p.user_id = current_setting('citeline.user', true)));
CREATE POLICY documents_writer ON documents FOR ALL TO citeline_writer USING (true) WITH CHECK (true);

GRANT SELECT ON chunks, documents, principals, sources, index_meta TO citeline_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON sources, documents, chunks, principals, sync_runs, sync_failures
    TO citeline_writer;
GRANT SELECT ON index_meta TO citeline_writer;
-- the audit log is append-only for the application roles
GRANT SELECT, INSERT ON audit_log TO citeline_writer, citeline_reader;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA __SCHEMA__ TO citeline_writer;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO citeline_reader;
