-- The index records which embedder made its vectors: index_meta 'embedder' (its `name`, e.g.
-- "sentence-transformers:all-MiniLM-L6-v2" or "openai:<model>"). The process that embeds (sync, search)
-- writes it on first use as citeline_writer, so an index created before this adopts the embedder that
-- opens it next; once there it is never changed here (no UPDATE grant): another embedder is refused
-- (citeline.db.embedder_record).
GRANT INSERT ON index_meta TO citeline_writer;
