-- Feedback on answers (issue 19, item 1): thumbs up or down, a reason and an optional corrected answer,
-- given by the principal who asked, stored against the answer's audit row (which records the question,
-- the evidence shown and the model or adapter version that answered).
--
-- One row per answer: giving feedback again replaces it (every change is also an audit row, kind
-- 'feedback'). team and model are copied from the audit row when the feedback is given, so reports per
-- team and adapter version need no scan of the audit log. The application roles never read this table on
-- behalf of a user: only citeline_writer (the server, `citeline feedback report`, the data builder).
-- Safe to apply twice (IF NOT EXISTS; grants repeat harmlessly), like every migration that may be the newest.
CREATE TABLE IF NOT EXISTS feedback (
    id           bigserial PRIMARY KEY,
    audit_id     bigint NOT NULL UNIQUE,
    principal    text NOT NULL,
    team         text,
    model        text NOT NULL,
    rating       smallint NOT NULL CHECK (rating IN (-1, 1)),
    reason       text NOT NULL DEFAULT '' CHECK (length(reason) <= 2000),
    correction   text CHECK (correction IS NULL OR length(correction) BETWEEN 1 AND 16000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS feedback_team_model ON feedback (team, model);

GRANT SELECT, INSERT, UPDATE ON feedback TO citeline_writer;
GRANT USAGE ON SEQUENCE feedback_id_seq TO citeline_writer;

-- A streamed answer's text is in its closing row (action 'answer.end', payload.answer_audit_id): found by
-- this index instead of a scan of the whole log.
CREATE INDEX IF NOT EXISTS audit_log_answer_end ON audit_log (((payload ->> 'answer_audit_id')::bigint))
    WHERE action = 'answer.end';
