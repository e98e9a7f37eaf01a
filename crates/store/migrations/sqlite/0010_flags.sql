-- Feature flags and kill switches (flags.rs): on or off, optionally for a percentage of clients (sticky:
-- a client's bucket comes from a hash of the flag's name and the client's key). `flag_changes` holds one
-- number that every change (set or remove) bumps in the same transaction, so an instance notices any
-- change by reading one row.
CREATE TABLE flags (
    name       TEXT PRIMARY KEY,
    enabled    INTEGER NOT NULL,
    percent    INTEGER,
    note       TEXT,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE flag_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO flag_changes (id, version) VALUES (1, 0);
