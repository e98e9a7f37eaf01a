-- Stock an order has taken but whose order is not yet on its shard: written in the transaction that takes
-- the stock, deleted once the order is written. A reservation left behind (a process killed in between) is
-- found by the reconciler, which gives the stock back unless the order exists.
CREATE TABLE order_reservations (
    order_id   BIGINT PRIMARY KEY,
    items      TEXT NOT NULL,        -- JSON: [[product_id, quantity], ...]
    created_ms BIGINT NOT NULL
);
