-- The durable job queue (queue.rs): one row per job, kept after it finishes until pruned. Claims take a
-- batch with FOR UPDATE SKIP LOCKED over the partial index of queued jobs. A job's row is updated a few
-- times in its life (claim, heartbeats, end): the low fill factor leaves room on each page for those
-- updates to be HOT (no index changes, no new index entries), which keeps the table and indexes from
-- bloating under a steady flow; finished jobs are deleted in batches after their retention.
CREATE TABLE jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    args            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead', 'cancelled')),
    priority        BIGINT NOT NULL,
    run_at          BIGINT NOT NULL,
    attempts        BIGINT NOT NULL,
    max_attempts    BIGINT NOT NULL,
    progress        BIGINT NOT NULL,
    last_error      TEXT,
    result          TEXT,
    idempotency_key TEXT UNIQUE,
    worker          TEXT,
    lease           BIGINT NOT NULL,
    lease_until     BIGINT,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    finished_ms     BIGINT
) WITH (fillfactor = 70);
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_ms) WHERE state IN ('done', 'cancelled');
CREATE INDEX jobs_by_state ON jobs (state, queue);
