-- Least-privilege runtime login (issue 15, item 3). Servers and workers log in as a login that holds only
-- citeline_reader and citeline_writer (`citeline db migrate --runtime-login NAME`, or the embedded server's
-- citeline_app); it owns nothing and may not migrate. Opening the index first reads which migrations are
-- applied (schema_migrations) and the recorded dimension (index_meta, already readable): the runtime login
-- reads them through its roles.
GRANT SELECT ON schema_migrations TO citeline_reader, citeline_writer;
