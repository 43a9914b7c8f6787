-- anxin schema v1 (SQLite). Times are integer milliseconds since the Unix epoch, written by
-- the engine from its injected clock (never SQL now()), identical on both backends.

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);

-- Every accepted event, heartbeats included (retention comes later).
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    TEXT NOT NULL,
    type         TEXT NOT NULL,
    fields       TEXT NOT NULL,
    device_ts    INTEGER,
    seq          INTEGER,
    received_at  INTEGER NOT NULL,
    committed_at INTEGER NOT NULL,
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
    seen_at     INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX dedup_expiry ON dedup (expires_at);

-- Messages or array elements refused, with their raw bytes for inspection.
CREATE TABLE rejected (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    TEXT,
    origin       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    raw          BLOB NOT NULL,
    received_at  INTEGER NOT NULL
);

CREATE TABLE alerts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id        TEXT NOT NULL,
    resident_id      TEXT,
    rule             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    severity         TEXT NOT NULL,
    severity_rank    INTEGER NOT NULL,
    title            TEXT NOT NULL,
    status           TEXT NOT NULL,
    count            INTEGER NOT NULL,
    escalation_level INTEGER NOT NULL DEFAULT 0,
    opened_at        INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_event_at    INTEGER NOT NULL,
    acknowledged_at  INTEGER,
    acknowledged_by  TEXT,
    resolved_at      INTEGER,
    resolved_by      TEXT,
    outcome          TEXT,
    note             TEXT
);
-- One unresolved alert per device and rule, enforced by the database.
CREATE UNIQUE INDEX alerts_one_open ON alerts (device_id, rule) WHERE status <> 'resolved';
CREATE INDEX alerts_queue ON alerts (status, severity_rank, opened_at, id);

-- Append-only history of an alert.
CREATE TABLE alert_timeline (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id  INTEGER NOT NULL REFERENCES alerts (id),
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX alert_timeline_alert ON alert_timeline (alert_id, id);
