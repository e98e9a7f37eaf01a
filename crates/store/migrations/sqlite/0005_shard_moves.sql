-- Bucket moves in progress (`tenfold shards move`): one row per bucket being moved, removed when the move
-- ends. A mover that died leaves its row, and running the same move again resumes it.
CREATE TABLE shard_moves (
    bucket     INTEGER PRIMARY KEY,
    from_shard INTEGER NOT NULL,
    to_shard   INTEGER NOT NULL,
    started_at TEXT NOT NULL
) STRICT;
