-- Service records (CONTRACT.md "Care records"): a carer sent to a resident — from an alert's
-- dispatch, or a planned home-care visit (alert_id NULL, planned_at) — checked in on site and
-- out with what was done, the content, the outcome and the resident's rating, then the
-- follow-up call (回访) with its result and the next visit. Provider and worker are names here; as records of their own, scoped
-- by region, they come with the providers step.

-- status: dispatched → on_site (check-in) → done (check-out).
CREATE TABLE service_records (
    id            BIGSERIAL PRIMARY KEY,
    alert_id      BIGINT REFERENCES alerts (id),
    resident_id   TEXT,
    device_id     TEXT,
    provider      TEXT NOT NULL,
    worker        TEXT NOT NULL,
    status        TEXT NOT NULL,
    opened_by     TEXT NOT NULL,
    opened_at     BIGINT NOT NULL,
    check_in_at   BIGINT,
    check_in_lat  DOUBLE PRECISION,
    check_in_lon  DOUBLE PRECISION,
    check_out_at  BIGINT,
    check_out_lat DOUBLE PRECISION,
    check_out_lon DOUBLE PRECISION,
    items         TEXT NOT NULL DEFAULT '[]',
    content       TEXT,
    outcome       TEXT,
    rating        BIGINT,
    planned_at    BIGINT,
    follow_up_at     BIGINT,
    follow_up_by     TEXT,
    follow_up_result TEXT,
    follow_up_note   TEXT,
    next_visit_at    BIGINT,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX service_records_resident ON service_records (resident_id, opened_at);
CREATE INDEX service_records_opened ON service_records (opened_at, id);
CREATE INDEX service_records_alert ON service_records (alert_id);
