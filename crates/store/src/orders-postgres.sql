-- Applied (idempotently) to every order shard when it is opened; the shard may share a database with the catalog.
-- Sent as one simple query, so it runs as one transaction; the advisory lock serializes instances that open
-- a fresh shard at the same moment (concurrent CREATE ... IF NOT EXISTS can fail on PostgreSQL's catalogs).
SELECT pg_advisory_xact_lock(7301001);
-- One order shard. Each order keeps a snapshot of its items (name and price at purchase), so reading it
-- needs no join with the catalog (which lives in another database).
CREATE TABLE IF NOT EXISTS orders (
    id          BIGINT PRIMARY KEY,           -- carries its bucket (see shards.rs)
    customer_id BIGINT NOT NULL,
    bucket      BIGINT NOT NULL,
    items       TEXT NOT NULL,                -- JSON: [{product_id, name, price_minor, quantity}]
    total_minor BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, id);
CREATE INDEX IF NOT EXISTS orders_by_bucket ON orders (bucket, id);
-- What this shard may do with each bucket's orders: 'owned' (read and write), 'fenced' (read only, while a
-- move finishes) or 'gone' (not here). Reads and writes check it in the same statement (see orders.rs).
CREATE TABLE IF NOT EXISTS order_buckets (
    bucket BIGINT PRIMARY KEY,
    state  TEXT NOT NULL CHECK (state IN ('owned', 'fenced', 'gone'))
);
