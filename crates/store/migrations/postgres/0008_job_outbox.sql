-- The transactional outbox of the NATS JetStream queue backend (queue/nats.rs): an enqueue writes the job
-- and its outbox row in one transaction; a relay publishes due rows to JetStream and deletes them. The
-- row carries what the subject needs, so a job pruned meanwhile leaves nothing behind that needs a join.
CREATE TABLE job_outbox (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   BIGINT NOT NULL,
    queue    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    priority BIGINT NOT NULL,
    due_ms   BIGINT NOT NULL
);
CREATE INDEX job_outbox_due ON job_outbox (due_ms, id);
CREATE INDEX job_outbox_job ON job_outbox (job_id);
