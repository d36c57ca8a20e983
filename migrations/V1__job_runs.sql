-- The idempotency ledger: one row per idempotency key.
CREATE TABLE keshless_ops.job_runs (
    idempotency_key  text        PRIMARY KEY,
    job              text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'dead_lettered')),
    -- Runs started for this key, including failed and interrupted ones.
    attempts         integer     NOT NULL DEFAULT 1 CHECK (attempts >= 0),
    lease_owner      text,
    lease_expires_at timestamptz,
    message_id       text,
    source           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    last_error       text,
    result           jsonb,
    CHECK (status <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);

CREATE INDEX job_runs_job_updated ON keshless_ops.job_runs (job, updated_at DESC);
