-- Principals that sync themselves (issue 18, item 4): which principal source manages a principal, and what
-- the identity provider pushed over SCIM 2.0.
--
-- managed_by: the [[principal_sources]] entry that owns the principal (NULL: added by hand or from a file).
-- A source's sync only adds, updates and removes the principals it owns, never one added another way.
ALTER TABLE principals ADD COLUMN managed_by text;
CREATE INDEX principals_managed_by ON principals (managed_by) WHERE managed_by IS NOT NULL;

-- SCIM resources as the identity provider pushed them (RFC 7643). A user maps to a principal named by its
-- userName while active; its groups are the displayNames of the groups that list it as a member. Runs of
-- white space become '-' in those names ("Sales Team" -> group "Sales-Team"), so the unique indexes compare
-- the mapped names: two resources can never map to the same principal or group (that would merge access).
CREATE TABLE scim_users (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_name    text NOT NULL,
    external_id  text,
    active       boolean NOT NULL DEFAULT true,
    resource     jsonb NOT NULL,
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- userName is unique case-insensitively (RFC 7643 §4.1.1: caseExact false)
CREATE UNIQUE INDEX scim_users_user_name ON scim_users (lower(regexp_replace(user_name, '\s+', '-', 'g')));

CREATE TABLE scim_groups (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    display_name text NOT NULL,
    external_id  text,
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX scim_groups_display_name ON scim_groups (lower(regexp_replace(display_name, '\s+', '-', 'g')));

CREATE TABLE scim_members (
    group_id uuid NOT NULL REFERENCES scim_groups (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES scim_users (id) ON DELETE CASCADE,
    display  text,  -- as the provider sent it (read back as sent); the userName when it sent none
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX scim_members_user ON scim_members (user_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON scim_users, scim_groups, scim_members TO citeline_writer;
