-- Which order shard holds each of the 1,024 buckets (see shards.rs), with the map's version.
CREATE TABLE shard_map_meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL,
    shards  BIGINT NOT NULL
);
CREATE TABLE shard_map (
    bucket BIGINT PRIMARY KEY,
    shard  BIGINT NOT NULL
);
