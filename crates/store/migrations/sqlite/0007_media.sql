-- Uploaded media of products: the original's blob key and the job that makes its renditions (inserted in
-- the same transaction as that job, so an upload never lacks its job nor a job its upload).
CREATE TABLE media (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id INTEGER NOT NULL,
    blob_key   TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    job_id     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX media_by_product ON media (product_id, id);
