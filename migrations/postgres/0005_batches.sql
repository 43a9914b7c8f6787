-- One row per committed batch, written in the batch's own transaction: a retry after a commit
-- whose answer was lost (the connection dropped after COMMIT, or a commit abandoned in a
-- network partition) finds its token and returns what the first attempt did instead of
-- writing twice. Rows older than an hour are purged with the expired dedup keys.
CREATE TABLE batches (
    token        TEXT PRIMARY KEY,
    committed_at BIGINT NOT NULL,
    outcome      TEXT NOT NULL
);
CREATE INDEX batches_committed ON batches (committed_at);
