-- Which order shard holds each of the 1,024 buckets (see shards.rs), with the map's version.
CREATE TABLE shard_map_meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    shards  INTEGER NOT NULL
) STRICT;
CREATE TABLE shard_map (
    bucket INTEGER PRIMARY KEY,
    shard  INTEGER NOT NULL
) STRICT;
