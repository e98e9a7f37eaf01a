-- Where a long job got to (JSON), saved by its handler under its lease, so a job that runs again after a
-- crash resumes there instead of starting over.
ALTER TABLE jobs ADD COLUMN checkpoint TEXT;
