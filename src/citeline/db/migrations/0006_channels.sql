-- Information channels (issue 13, item 9). Runs with search_path set to the namespace schema;
-- __SCHEMA__ is the namespace's quoted identifier.
--
-- 1. Identity that a database login cannot forge. Row-level security used to trust the setting
--    citeline.user, which any session may set: a login granted only citeline_reader could name any
--    principal and see that principal's documents. Now the application sets the identity through
--    citeline_login(user), which only citeline_writer may EXECUTE (a writer sees every row anyway, so
--    this gives it nothing new). citeline_login stores the user and a MAC over (the user, the backend's
--    pid, the transaction's start time) keyed by identity_key, a random key that no application role can
--    read. The policies read the identity through citeline_identity() / citeline_tokens(), which return
--    NULL (public rows only: fail closed) unless the MAC matches this very transaction on this very
--    backend. The MAC is never visible to other sessions, and it is worthless outside its transaction.
--
-- 2. Audit reads only for the auditor. citeline_reader no longer reads audit_log; citeline_auditor (a
--    NOLOGIN role created by citeline.db.migrations, granted to the application's login and to whoever
--    an operator grants it) may SELECT it. citeline_writer keeps SELECT and INSERT (the chain head, and
--    `citeline audit verify/export`).
--
-- 3. BM25 statistics per visibility class. Document frequencies over all chunks let a principal learn,
--    from the scores and order of the results it may see, whether documents it may not see contain a
--    term. The statistics are now also kept per class: all public chunks form one class, every distinct
--    (sorted) ACL of a private chunk another. A principal's statistics are the sums over the classes it
--    may see (public, or ACL sharing one of its tokens): exactly the document frequencies, chunk count
--    and mean length of the chunks it can see, and nothing else. retrieval.lexical_statistics = "global"
--    keeps the old corpus-wide statistics (a documented channel, traded for ranking).

-- -- 1. identity -------------------------------------------------------------------------------------

CREATE TABLE identity_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       text NOT NULL
);
-- gen_random_uuid() draws from the server's strong random source: 244 random bits
INSERT INTO identity_key (key) VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
REVOKE ALL ON identity_key FROM PUBLIC;
GRANT SELECT ON identity_key TO citeline_lexicon;

-- the MAC of a (user, backend, transaction): HMAC-style sha256(key || sha256(key || message))
CREATE FUNCTION identity_mac(k text, who text)
    RETURNS text
    LANGUAGE sql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT encode(sha256(convert_to(k || encode(sha256(convert_to(
        k || ':' || pg_backend_pid()::text || ':' || (extract(epoch FROM now()) * 1000000)::bigint::text
          || ':' || who, 'UTF8')), 'hex'), 'UTF8')), 'hex')
$$;

-- Sets the transaction's principal. Only citeline_writer may call it (the application switches to the
-- reader role after calling it, in the same statement).
CREATE FUNCTION citeline_login(who text)
    RETURNS text
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT set_config('citeline.user', coalesce(who, ''), true)
           || set_config('citeline.identity', identity_mac(k.key, coalesce(who, '')), true)
    FROM identity_key k
$$;

-- The principal set by citeline_login() in this transaction, or NULL (never a name set by hand).
CREATE FUNCTION citeline_identity()
    RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT nullif(current_setting('citeline.user', true), '')
    FROM identity_key k
    WHERE current_setting('citeline.identity', true)
          = identity_mac(k.key, coalesce(current_setting('citeline.user', true), ''))
$$;

-- True in a transaction whose identity citeline_login() set (whoever it names, '' included): an
-- application transaction, never a bare database login.
CREATE FUNCTION citeline_session()
    RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT coalesce((SELECT current_setting('citeline.identity', true)
                            = identity_mac(k.key, coalesce(current_setting('citeline.user', true), ''))
                     FROM identity_key k), false)
$$;

-- The ACL tokens of that principal (NULL: none, public rows only).
CREATE FUNCTION citeline_tokens()
    RETURNS text[]
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT p.tokens FROM principals p WHERE p.user_id = citeline_identity()
$$;

-- the policies read the verified identity (a scalar subquery: evaluated once per statement)
DROP POLICY principals_self ON principals;
CREATE POLICY principals_self ON principals FOR SELECT TO citeline_reader
    USING (user_id = (SELECT citeline_identity()));
DROP POLICY chunks_reader ON chunks;
CREATE POLICY chunks_reader ON chunks FOR SELECT TO citeline_reader
    USING (public OR acl && (SELECT citeline_tokens()));
DROP POLICY documents_reader ON documents;
CREATE POLICY documents_reader ON documents FOR SELECT TO citeline_reader
    USING (public OR acl && (SELECT citeline_tokens()));
-- citeline_lexicon only runs the SECURITY DEFINER functions here, which select by the verified identity
DROP POLICY principals_lexicon ON principals;
CREATE POLICY principals_lexicon ON principals FOR SELECT TO citeline_lexicon USING (true);

-- Corpus-wide statistics (retrieval.lexical_statistics = "global") count chunks the principal may not see:
-- only application transactions get them, not a bare database login holding citeline_reader.
CREATE OR REPLACE FUNCTION lexicon_lookup(terms text[])
    RETURNS TABLE (lexeme text, ndoc int)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT DISTINCT t.lexeme, coalesce(l.ndoc, 0)
    FROM unnest(terms) AS t(lexeme)
    LEFT JOIN lexemes l ON l.lexeme = t.lexeme
    WHERE (SELECT citeline_session())
$$;

-- The visibility test of lexical_match() repeats chunks_reader; keep the two in step.
CREATE OR REPLACE FUNCTION lexical_match(q tsquery)
    RETURNS TABLE (id bigint)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT c.id FROM chunks c
    WHERE c.tsv @@ (SELECT q)
      AND (c.public OR c.acl && (SELECT citeline_tokens()))
$$;

-- -- 3. per-class statistics (before the ownership changes below) -----------------------------------

-- one row per visibility class: public chunks (public, '{}'), or one distinct sorted ACL of private ones
CREATE TABLE lexicon_classes (
    id           serial PRIMARY KEY,
    public       boolean NOT NULL,
    acl          text[] NOT NULL,
    chunks       bigint NOT NULL,
    -- sum of length(tsv): with chunks, the mean document length BM25 reads
    total_length bigint NOT NULL,
    UNIQUE (public, acl)
);

-- document frequency of a lexeme within one class
CREATE TABLE class_lexemes (
    lexeme   text NOT NULL,
    class_id int NOT NULL REFERENCES lexicon_classes (id) ON DELETE CASCADE,
    ndoc     int NOT NULL CHECK (ndoc > 0),
    PRIMARY KEY (lexeme, class_id)
);

-- The class of a chunk.
CREATE FUNCTION lexicon_class_acl(is_public boolean, acl text[])
    RETURNS text[]
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN is_public THEN '{}'::text[]
                ELSE ARRAY(SELECT DISTINCT a FROM unnest(acl) a ORDER BY a) END
$$;

-- Per-class document frequencies, one ts_stat per class (a class's chunks: public, or a private ACL equal
-- as a set to the class's, which the GIN index on acl finds).
CREATE FUNCTION lexicon_class_frequencies()
    RETURNS TABLE (lexeme text, class_id int, ndoc int)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT id, public, acl FROM lexicon_classes LOOP
        IF k.public THEN
            RETURN QUERY SELECT s.word, k.id, s.ndoc FROM ts_stat('SELECT tsv FROM chunks WHERE public') s;
        ELSE
            RETURN QUERY SELECT s.word, k.id, s.ndoc FROM ts_stat(format(
                'SELECT tsv FROM chunks WHERE NOT public AND acl @> %L::text[] AND acl <@ %L::text[]',
                k.acl, k.acl)) s;
        END IF;
    END LOOP;
END
$$;

-- Recompute the classes and their document frequencies from all chunks (run by refresh_lexicon as
-- citeline_writer, in its transaction). Only changed rows are written. Returns the rows changed.
CREATE FUNCTION lexicon_refresh_classes()
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
DECLARE
    changed bigint := 0;
    n bigint;
BEGIN
    WITH fresh AS MATERIALIZED (
        SELECT public, lexicon_class_acl(public, acl) AS acl, count(*) AS chunks,
               coalesce(sum(length(tsv)), 0) AS total_length
        FROM chunks GROUP BY 1, 2
    ), upserted AS (
        INSERT INTO lexicon_classes (public, acl, chunks, total_length)
        SELECT public, acl, chunks, total_length FROM fresh
        ON CONFLICT (public, acl) DO UPDATE SET chunks = EXCLUDED.chunks, total_length = EXCLUDED.total_length
            WHERE (lexicon_classes.chunks, lexicon_classes.total_length)
                  IS DISTINCT FROM (EXCLUDED.chunks, EXCLUDED.total_length)
        RETURNING 1
    ), removed AS (
        DELETE FROM lexicon_classes l
        WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.public = l.public AND f.acl = l.acl)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM upserted) + (SELECT count(*) FROM removed) INTO n;
    changed := changed + n;

    IF (SELECT count(*) FROM lexicon_classes) <= 100 THEN
        -- few classes: one ts_stat per class, its chunks found through the GIN index on acl (0.17 s for 20
        -- classes at 5.5k chunks, against 1.1 s for unnest + GROUP BY; but 1.5 s against 1.1 s at 500 classes)
        WITH fresh AS MATERIALIZED (
            SELECT * FROM lexicon_class_frequencies()
        ), upserted AS (
            INSERT INTO class_lexemes (lexeme, class_id, ndoc) SELECT lexeme, class_id, ndoc FROM fresh
            ON CONFLICT (lexeme, class_id) DO UPDATE SET ndoc = EXCLUDED.ndoc
                WHERE class_lexemes.ndoc <> EXCLUDED.ndoc
            RETURNING 1
        ), removed AS (
            DELETE FROM class_lexemes l
            WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.lexeme = l.lexeme AND f.class_id = l.class_id)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM upserted) + (SELECT count(*) FROM removed) INTO n;
    ELSE
        WITH fresh AS MATERIALIZED (
            SELECT u.lexeme, k.id AS class_id, count(*)::int AS ndoc
            FROM chunks c
            JOIN lexicon_classes k ON k.public = c.public AND k.acl = lexicon_class_acl(c.public, c.acl)
            CROSS JOIN LATERAL unnest(c.tsv) u
            GROUP BY 1, 2
        ), upserted AS (
            INSERT INTO class_lexemes (lexeme, class_id, ndoc) SELECT lexeme, class_id, ndoc FROM fresh
            ON CONFLICT (lexeme, class_id) DO UPDATE SET ndoc = EXCLUDED.ndoc
                WHERE class_lexemes.ndoc <> EXCLUDED.ndoc
            RETURNING 1
        ), removed AS (
            DELETE FROM class_lexemes l
            WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.lexeme = l.lexeme AND f.class_id = l.class_id)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM upserted) + (SELECT count(*) FROM removed) INTO n;
    END IF;
    RETURN changed + n;
END
$$;

-- An access change rewrites chunks.acl/public in place (no new chunk ids): it moves chunks between
-- classes, so it marks the statistics stale (lexicon_is_stale compares this counter). A sequence, so
-- concurrent syncs never wait on each other for it.
CREATE SEQUENCE lexicon_access_changes;
CREATE FUNCTION lexicon_access_changed()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
BEGIN
    PERFORM nextval('lexicon_access_changes');
    RETURN NULL;
END
$$;
CREATE TRIGGER chunks_access_changed AFTER UPDATE OF acl, public ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION lexicon_access_changed();
ALTER TABLE lexicon_stats ADD COLUMN access_changes bigint NOT NULL DEFAULT 0;

-- The question's lexemes with their document frequencies among the chunks the current principal may
-- see (0: none), and that corpus' size and mean length.
CREATE FUNCTION lexicon_lookup_visible(terms text[])
    RETURNS TABLE (lexeme text, ndoc int)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    WITH visible AS MATERIALIZED (
        SELECT id FROM lexicon_classes WHERE public OR acl && (SELECT citeline_tokens())
    )
    SELECT t.lexeme, coalesce((SELECT sum(l.ndoc)::int FROM class_lexemes l
                               WHERE l.lexeme = t.lexeme AND l.class_id IN (SELECT id FROM visible)), 0)
    FROM (SELECT DISTINCT u AS lexeme FROM unnest(terms) u) t
$$;

CREATE FUNCTION lexicon_corpus_global()
    RETURNS TABLE (chunks bigint, avg_length float8)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT s.chunks, s.avg_length FROM lexicon_stats s WHERE (SELECT citeline_session())
$$;

CREATE FUNCTION lexicon_corpus_visible()
    RETURNS TABLE (chunks bigint, avg_length float8)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, __SCHEMA__, pg_temp
AS $$
    SELECT coalesce(sum(k.chunks), 0)::bigint,
           (sum(k.total_length)::float8 / nullif(sum(k.chunks), 0))
    FROM lexicon_classes k
    WHERE k.public OR k.acl && (SELECT citeline_tokens())
$$;

-- -- privileges and owners ---------------------------------------------------------------------------

REVOKE ALL ON FUNCTION identity_mac(text, text), citeline_login(text), citeline_identity(), citeline_tokens(),
    citeline_session(), lexicon_corpus_global(),
    lexicon_class_acl(boolean, text[]), lexicon_class_frequencies(), lexicon_refresh_classes(),
    lexicon_access_changed(),
    lexicon_lookup_visible(text[]), lexicon_corpus_visible() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity_mac(text, text) TO citeline_lexicon;
GRANT EXECUTE ON FUNCTION citeline_login(text) TO citeline_writer;
-- the policies call these as the querying role
GRANT EXECUTE ON FUNCTION citeline_identity(), citeline_tokens(), citeline_session()
    TO citeline_reader, citeline_writer, citeline_lexicon;
GRANT EXECUTE ON FUNCTION lexicon_lookup_visible(text[]), lexicon_corpus_visible(), lexicon_corpus_global()
    TO citeline_reader, citeline_writer;
REVOKE SELECT ON lexicon_stats FROM citeline_reader;
GRANT SELECT ON lexicon_stats TO citeline_lexicon;
GRANT EXECUTE ON FUNCTION lexicon_class_acl(boolean, text[]), lexicon_class_frequencies(), lexicon_refresh_classes(),
    lexicon_access_changed() TO citeline_writer;
GRANT SELECT ON lexicon_classes, class_lexemes TO citeline_lexicon;
GRANT SELECT, INSERT, UPDATE, DELETE ON lexicon_classes, class_lexemes TO citeline_writer;
GRANT USAGE ON SEQUENCE lexicon_classes_id_seq TO citeline_writer;
GRANT USAGE, SELECT ON SEQUENCE lexicon_access_changes TO citeline_writer;

GRANT USAGE ON SCHEMA __SCHEMA__ TO citeline_lexicon;
GRANT CREATE ON SCHEMA __SCHEMA__ TO citeline_lexicon;
ALTER FUNCTION citeline_login(text) OWNER TO citeline_lexicon;
ALTER FUNCTION citeline_identity() OWNER TO citeline_lexicon;
ALTER FUNCTION citeline_tokens() OWNER TO citeline_lexicon;
ALTER FUNCTION citeline_session() OWNER TO citeline_lexicon;
ALTER FUNCTION lexicon_corpus_global() OWNER TO citeline_lexicon;
ALTER FUNCTION lexicon_lookup_visible(text[]) OWNER TO citeline_lexicon;
ALTER FUNCTION lexicon_corpus_visible() OWNER TO citeline_lexicon;
REVOKE CREATE ON SCHEMA __SCHEMA__ FROM citeline_lexicon;

-- -- 2. the audit log: read by the auditor (and the writer), not by the reader ----------------------------
REVOKE SELECT ON audit_log FROM citeline_reader;
GRANT SELECT ON audit_log TO citeline_auditor;
GRANT USAGE ON SCHEMA __SCHEMA__ TO citeline_auditor;

-- the statistics of a namespace that already holds chunks, computed as the writer (row-level security
-- is forced on chunks, so an owner that is not a superuser would see none of them)
SET LOCAL ROLE citeline_writer;
SELECT lexicon_refresh_classes();
RESET ROLE;
