-- The durable job queue (queue.rs): one row per job, kept after it finishes until pruned. Claims scan the
-- partial index of queued jobs in priority order; the lease index finds expired leases.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so an id names one job forever
    queue           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    args            TEXT NOT NULL,                      -- JSON
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead', 'cancelled')),
    priority        INTEGER NOT NULL,
    run_at          INTEGER NOT NULL,                   -- Unix ms
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    progress        INTEGER NOT NULL,
    last_error      TEXT,
    result          TEXT,                               -- JSON
    idempotency_key TEXT UNIQUE,
    worker          TEXT,
    lease           INTEGER NOT NULL,                   -- the last claim's fencing token
    lease_until     INTEGER,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    finished_ms     INTEGER
) STRICT;
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_ms) WHERE state IN ('done', 'cancelled');
CREATE INDEX jobs_by_state ON jobs (state, queue);
