-- The notifications outbox (webhooks): what must be told to the outside world about an
-- alert, written in the same transaction as the change that caused it, so a crash can lose
-- neither the alert nor its notification; and its delivery to each configured endpoint.

-- One row per trigger: an alert opened with severity critical (cause 'opened', level 0) or
-- raised an escalation level (cause 'escalated', the level reached). payload is the JSON the
-- `json` format sends, frozen at commit. fanned_out_at is set once the dispatcher has made
-- this notification's deliveries (one per matching endpoint, in its own transaction);
-- until then the partial index finds it.
CREATE TABLE notifications (
    id             BIGSERIAL PRIMARY KEY,
    alert_id       BIGINT NOT NULL REFERENCES alerts (id),
    cause          TEXT NOT NULL,
    level          BIGINT NOT NULL,
    alert_kind     TEXT NOT NULL,
    severity       TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    fanned_out_at  BIGINT
);
CREATE INDEX notifications_unfanned ON notifications (id) WHERE fanned_out_at IS NULL;
CREATE INDEX notifications_created ON notifications (created_at);

-- One row per (notification, endpoint). status: pending → delivered, or pending → dead after
-- max_attempts (a redrive puts a dead one back to pending). next_attempt_at is when a pending
-- one is due; a claim moves it forward by the request timeout (a lease), so a delivery whose
-- dispatcher died mid-request comes due again by itself. created_at is the notification's
-- commit time: delivery latency and outbox age count from it.
CREATE TABLE deliveries (
    id               BIGSERIAL PRIMARY KEY,
    notification_id  BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    endpoint         TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    last_attempt_at  BIGINT,
    last_error       TEXT,
    delivered_at     BIGINT,
    UNIQUE (notification_id, endpoint)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_dead ON deliveries (id) WHERE status = 'dead';
