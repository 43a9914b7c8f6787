-- Service records (CONTRACT.md "Care records"): a carer sent to a resident — from an alert's
-- dispatch, or a planned home-care visit (alert_id NULL, planned_at) — checked in on site and
-- out with what was done, the content, the outcome and the resident's rating, then the
-- follow-up call (回访) with its result and the next visit. Provider and worker are names here; as records of their own, scoped
-- by region, they come with the providers step.

-- status: dispatched → on_site (check-in) → done (check-out).
CREATE TABLE service_records (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id      INTEGER REFERENCES alerts (id),
    resident_id   TEXT,
    device_id     TEXT,
    provider      TEXT NOT NULL,
    worker        TEXT NOT NULL,
    status        TEXT NOT NULL,
    opened_by     TEXT NOT NULL,
    opened_at     INTEGER NOT NULL,
    check_in_at   INTEGER,
    check_in_lat  REAL,
    check_in_lon  REAL,
    check_out_at  INTEGER,
    check_out_lat REAL,
    check_out_lon REAL,
    items         TEXT NOT NULL DEFAULT '[]',
    content       TEXT,
    outcome       TEXT,
    rating        INTEGER,
    planned_at    INTEGER,
    follow_up_at     INTEGER,
    follow_up_by     TEXT,
    follow_up_result TEXT,
    follow_up_note   TEXT,
    next_visit_at    INTEGER,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX service_records_resident ON service_records (resident_id, opened_at);
CREATE INDEX service_records_opened ON service_records (opened_at, id);
CREATE INDEX service_records_alert ON service_records (alert_id);
