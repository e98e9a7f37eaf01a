-- The change feed that carries cache invalidations between instances sharing this file (PostgreSQL uses
-- LISTEN/NOTIFY instead). Rows are numbered in commit order (one writer at a time) and pruned after a while;
-- a reader that finds its next number gone knows it missed something.
CREATE TABLE cache_feed (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    payload    TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
