-- Dead letters an operator acknowledged without replaying them
-- (`keshless-ops dlq discard ID --reason TEXT`): what was thrown away, why,
-- and by whom. One row per dead-letter copy; a second discard of the same
-- copy (its acknowledgement failed the first time) changes nothing.
CREATE TABLE keshless_ops.dead_letter_discards (
    dead_letter_message_id text        PRIMARY KEY,
    original_message_id    text,
    job                    text,
    idempotency_key        text,
    error_kind             text,
    error                  text,
    attempts               integer,
    dead_lettered_at       timestamptz,
    reason                 text        NOT NULL CHECK (btrim(reason) <> ''),
    discarded_by           text,
    discarded_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letter_discards_key ON keshless_ops.dead_letter_discards (idempotency_key);
