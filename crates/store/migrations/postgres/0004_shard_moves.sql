-- Bucket moves in progress (`tenfold shards move`): one row per bucket being moved, removed when the move
-- ends. A mover that died leaves its row, and running the same move again resumes it. `owner` names the mover
-- at work; another may take the move over only once `active_ms` (renewed at every step) is old.
CREATE TABLE shard_moves (
    bucket     BIGINT PRIMARY KEY,
    from_shard BIGINT NOT NULL,
    to_shard   BIGINT NOT NULL,
    started_at TEXT NOT NULL,
    owner      TEXT NOT NULL,
    active_ms  BIGINT NOT NULL
);
