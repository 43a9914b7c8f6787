-- Residents and the suppressions operators put on their alerts (CONTRACT.md "Residents and
-- suppressions"), and each device's own reporting interval for offline supervision.

-- A person the centre looks after; devices point at them with devices.resident_id. labels
-- (string map) and thresholds (number map, for rule `override`s) are JSON objects. Contacts,
-- medical notes and the ID-card number come with the care-records issue as columns of their
-- own (ALTER TABLE): they are indexed, masked and imported, which a JSON blob would hide.
CREATE TABLE residents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    region      TEXT NOT NULL,
    time_zone   TEXT NOT NULL,
    labels      TEXT NOT NULL DEFAULT '{}',
    thresholds  TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX residents_region ON residents (region, id);

-- "Do not alert" for one resident (all their devices) or one device, with an author, a
-- reason and a mandatory end. kinds is a JSON array of alert kinds, NULL for every kind but
-- sos, fall, smoke and gas (never suppressible). Ending one early sets ended_at / ended_by;
-- rows stay as the record of who silenced what. The batch commit adds the matches it kept
-- from opening an alert to suppressed_count.
CREATE TABLE suppressions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    resident_id      TEXT,
    device_id        TEXT,
    kinds            TEXT,
    reason           TEXT NOT NULL,
    author           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    until_at         INTEGER NOT NULL,
    ended_at         INTEGER,
    ended_by         TEXT,
    suppressed_count INTEGER NOT NULL DEFAULT 0,
    CHECK ((resident_id IS NULL) <> (device_id IS NULL))
);
CREATE INDEX suppressions_active ON suppressions (until_at) WHERE ended_at IS NULL;

-- How often the device reports at least once (its registration's report_interval), in
-- seconds; NULL: the default of its type from [devices] report_interval.
ALTER TABLE devices ADD COLUMN report_interval_secs INTEGER;
