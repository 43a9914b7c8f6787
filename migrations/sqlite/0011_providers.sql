-- Service providers and their workers (CONTRACT.md "Care records"): records of their own,
-- scoped by the provider's region, that dispatches and planned visits name. A record still
-- keeps the names as they were when it was written (provider, worker); provider_id and
-- worker_id link it when it named records.
CREATE TABLE providers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    region     TEXT NOT NULL,
    phone      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX providers_region ON providers (region, id);

CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES providers (id),
    name        TEXT NOT NULL,
    phone       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX workers_provider ON workers (provider_id, id);

ALTER TABLE service_records ADD COLUMN provider_id TEXT;
ALTER TABLE service_records ADD COLUMN worker_id TEXT;
-- How far from the resident's home the carer checked in (metres), when both positions are
-- known: a check-in far away is flagged on the record.
ALTER TABLE service_records ADD COLUMN check_in_distance_m REAL;
