-- Keys bound to one principal incarnation, and the point where the audit chain became keyed.

-- A principal row's incarnation changes whenever the row is deleted and created again (a removed user
-- re-added, a re-import, raw SQL); updating its groups keeps it. A key stores the incarnation it was
-- issued to and authenticates only while the principal still has it, so removing a principal kills its
-- keys for good, whatever path re-creates the name.
ALTER TABLE principals ADD COLUMN incarnation uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE api_keys ADD COLUMN principal_incarnation uuid;
-- existing keys: bound to their principal's current row only if that row is older than the key (a key
-- created before its principal was last re-created belonged to an earlier incarnation and stays dead)
UPDATE api_keys k SET principal_incarnation = p.incarnation FROM principals p
    WHERE p.user_id = k.user_id AND k.created_at >= p.created_at;

-- Rows written before this migration were chained with plain sha256 (no key); every later row must carry
-- the keyed hash (HMAC-SHA256, key outside the database). Only the schema owner can move this mark.
CREATE TABLE audit_meta (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    legacy_until bigint NOT NULL
);
INSERT INTO audit_meta (legacy_until) SELECT coalesce(max(id), 0) FROM audit_log;
GRANT SELECT ON audit_meta TO citeline_writer;
