-- Retrieval quality: corpus statistics for BM25 ranking, an index-backed way to match lexical rows
-- under row-level security (see citeline.retrieval.search and citeline.access.principals.refresh_lexicon), and a better
-- HNSW graph (at the end). Runs with search_path set to the namespace schema; __SCHEMA__ is the
-- namespace's quoted identifier.
--
-- Statistics: rebuilt from the chunks after a sync that changed them (ts_stat over chunks.tsv); between
-- syncs they may lag behind the chunks, which only shifts scores slightly. Document frequencies count
-- every chunk, whatever its ACL. The reader cannot read them row by row (that would list the vocabulary
-- of documents a principal may not see): search looks up only the question's own lexemes through
-- lexicon_lookup(). An IDF can still reflect chunks the principal cannot see: a small, known
-- information channel (docs/benchmarks.md).
--
-- Matching: `tsv @@ query` is not a leakproof operator, so in a query under row-level security
-- PostgreSQL evaluates it only after the policy and never through the GIN index: every lexical search
-- would scan the whole table. lexical_match() runs the GIN lookup as citeline_lexicon, a NOLOGIN role
-- whose only chunk policy is `true` (so the index is usable) and which can read only the columns it
-- needs (id, tsv, acl, public). It returns only ids of chunks the current principal may see (the same
-- test as the chunks_reader policy), and the search query joins those ids back to chunks as
-- citeline_reader, where row-level security applies again.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'citeline_lexicon') THEN
        CREATE ROLE citeline_lexicon NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT pg_has_role(current_user, 'citeline_lexicon', 'SET') THEN
        GRANT citeline_lexicon TO CURRENT_USER;
    END IF;
END
$$;

-- document frequency: the number of chunks whose tsv holds the lexeme
CREATE TABLE lexemes (
    lexeme text PRIMARY KEY,
    ndoc   int NOT NULL CHECK (ndoc > 0)
);

-- one row: the corpus the frequencies were computed from
CREATE TABLE lexicon_stats (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    chunks       bigint NOT NULL,
    -- mean number of distinct lexemes per chunk (length(tsv)), BM25's average document length
    avg_length   double precision NOT NULL,
    -- with chunks, detects any change of the chunk set since the refresh (ids only grow)
    max_chunk_id bigint,
    lexemes      int NOT NULL,
    refresh_ms   double precision,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);

-- The question's lexemes with their document frequencies (0: not in the statistics).
CREATE FUNCTION lexicon_lookup(terms text[])
    RETURNS TABLE (lexeme text, ndoc int)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT DISTINCT t.lexeme, coalesce(l.ndoc, 0)
    FROM unnest(terms) AS t(lexeme)
    LEFT JOIN lexemes l ON l.lexeme = t.lexeme
$$;

-- Ids of the chunks matching a tsquery (through the GIN index) that the current principal may see.
-- The visibility test repeats the chunks_reader policy of 0001; keep the two in step.
CREATE FUNCTION lexical_match(q tsquery)
    RETURNS TABLE (id bigint)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    -- (SELECT q): planned without the query's selectivity, so always through the GIN index; the row
    -- budget bounds the matches, and a sequential scan would read every row's tsv out of TOAST
    SELECT c.id FROM chunks c
    WHERE c.tsv @@ (SELECT q)
      AND (c.public OR c.acl && (SELECT p.tokens FROM principals p
                                 WHERE p.user_id = current_setting('citeline.user', true)))
$$;

CREATE POLICY chunks_lexicon ON chunks FOR SELECT TO citeline_lexicon USING (true);
CREATE POLICY principals_lexicon ON principals FOR SELECT TO citeline_lexicon
    USING (user_id = current_setting('citeline.user', true));
GRANT SELECT (id, tsv, acl, public) ON chunks TO citeline_lexicon;
GRANT SELECT (user_id, tokens) ON principals TO citeline_lexicon;
GRANT SELECT ON lexemes TO citeline_lexicon;

REVOKE ALL ON FUNCTION lexicon_lookup(text[]), lexical_match(tsquery) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lexicon_lookup(text[]), lexical_match(tsquery) TO citeline_reader, citeline_writer;
GRANT SELECT ON lexicon_stats TO citeline_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON lexemes, lexicon_stats TO citeline_writer;

-- the functions run as citeline_lexicon; it may create nothing, so CREATE is granted only for the
-- change of owner
GRANT USAGE ON SCHEMA __SCHEMA__ TO citeline_lexicon;
GRANT CREATE ON SCHEMA __SCHEMA__ TO citeline_lexicon;
ALTER FUNCTION lexicon_lookup(text[]) OWNER TO citeline_lexicon;
ALTER FUNCTION lexical_match(tsquery) OWNER TO citeline_lexicon;
REVOKE CREATE ON SCHEMA __SCHEMA__ FROM citeline_lexicon;

-- HNSW graph quality: ef_construction 128 instead of pgvector's default 64 (m stays 16). At 100k chunks
-- recall@10 of a search that sees 10% of the rows goes from 0.92 to 0.97 at the same cost, and from
-- 0.96 to 0.99 without a filter (docs/benchmarks.md). Building costs about twice as much, which ingest
-- does not notice (it waits on the embedder). A namespace that already holds chunks is re-indexed here,
-- once: about a minute per 100k chunks on 2 cores, during which searches of it wait.
SET LOCAL maintenance_work_mem = '512MB';
DROP INDEX chunks_embedding_hnsw;
CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 128);
