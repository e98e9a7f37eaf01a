-- Uploaded media of products: the original's blob key and the job that makes its renditions (inserted in
-- the same transaction as that job, so an upload never lacks its job nor a job its upload).
CREATE TABLE media (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id BIGINT NOT NULL,
    blob_key   TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size       BIGINT NOT NULL,
    job_id     BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX media_by_product ON media (product_id, id);
