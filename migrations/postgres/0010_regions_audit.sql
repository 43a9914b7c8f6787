-- Regions, the resident card, and the audit log (CONTRACT.md "Care records").

-- The region tree: province → city → district → street. A user assigned a region sees
-- everything below it. A resident's region that is not in the tree is a region of its own
-- with nothing above or below it (residents written before the tree existed keep working).
CREATE TABLE regions (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    parent     TEXT REFERENCES regions (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX regions_parent ON regions (parent);

-- The resident card beyond what the rules read: the ID-card number as a column of its own
-- (one person, one record: unique across every region), the rest as a JSON object.
ALTER TABLE residents ADD COLUMN id_number TEXT;
ALTER TABLE residents ADD COLUMN card TEXT NOT NULL DEFAULT '{}';
CREATE UNIQUE INDEX residents_id_number ON residents (id_number) WHERE id_number IS NOT NULL;

-- Every write through the API: who, what, when, from where, and how it ended. Append-only:
-- the trigger refuses any change or removal, so a copy of the database proves what was done.
CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT,
    method  TEXT NOT NULL,
    path    TEXT NOT NULL,
    status  INTEGER NOT NULL,
    remote  TEXT
);
CREATE INDEX audit_log_at ON audit_log (at, id);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
