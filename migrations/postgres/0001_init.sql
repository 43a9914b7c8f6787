-- anxin schema v1 (PostgreSQL). Times are integer milliseconds since the Unix epoch, written by
-- the engine from its injected clock (never SQL now()), identical on both backends.

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);

-- Every accepted event, heartbeats included (retention comes later).
CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    device_id    TEXT NOT NULL,
    type         TEXT NOT NULL,
    fields       TEXT NOT NULL,
    device_ts    BIGINT,
    seq          BIGINT,
    received_at  BIGINT NOT NULL,
    committed_at BIGINT NOT NULL,
    protocol     TEXT NOT NULL,
    origin       TEXT NOT NULL,
    dedup_key    TEXT NOT NULL
);
CREATE INDEX events_device ON events (device_id, id);

-- Recently seen event keys, for recognising redeliveries (DESIGN.md guarantee 2). A key
-- matches until valid_until ((device, seq, ts) keys: the dedup window; payload hashes: the
-- short redelivery window, or the dedup window for a copy the broker flagged DUP); after
-- that the next event with the key overwrites the row. Rows are purged after expires_at.
CREATE TABLE dedup (
    device_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    seen_at     BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX dedup_expiry ON dedup (expires_at);

-- Messages or array elements refused, with their raw bytes for inspection.
CREATE TABLE rejected (
    id           BIGSERIAL PRIMARY KEY,
    device_id    TEXT,
    origin       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    raw          BYTEA NOT NULL,
    received_at  BIGINT NOT NULL
);

CREATE TABLE alerts (
    id               BIGSERIAL PRIMARY KEY,
    device_id        TEXT NOT NULL,
    resident_id      TEXT,
    rule             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    severity         TEXT NOT NULL,
    severity_rank    BIGINT NOT NULL,
    title            TEXT NOT NULL,
    status           TEXT NOT NULL,
    count            BIGINT NOT NULL,
    escalation_level BIGINT NOT NULL DEFAULT 0,
    opened_at        BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    last_event_at    BIGINT NOT NULL,
    acknowledged_at  BIGINT,
    acknowledged_by  TEXT,
    resolved_at      BIGINT,
    resolved_by      TEXT,
    outcome          TEXT,
    note             TEXT
);
-- One unresolved alert per device and rule, enforced by the database.
CREATE UNIQUE INDEX alerts_one_open ON alerts (device_id, rule) WHERE status <> 'resolved';
CREATE INDEX alerts_queue ON alerts (status, severity_rank, opened_at, id);

-- Append-only history of an alert.
CREATE TABLE alert_timeline (
    id        BIGSERIAL PRIMARY KEY,
    alert_id  BIGINT NOT NULL REFERENCES alerts (id),
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX alert_timeline_alert ON alert_timeline (alert_id, id);
