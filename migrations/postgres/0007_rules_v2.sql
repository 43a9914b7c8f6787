-- Rules v2: durable deadlines, device activity for absences, and what an alert's condition was.
--
-- An alert names its subject (the device id, or "r/<resident id>" for what a resident's
-- devices do together), the version of the rule that opened it, and since when its condition
-- held (the last activity before an absence, the start of a `for`). One unresolved alert per
-- subject and rule.
ALTER TABLE alerts ADD COLUMN subject TEXT;
ALTER TABLE alerts ADD COLUMN rule_version TEXT;
ALTER TABLE alerts ADD COLUMN since_at BIGINT;
UPDATE alerts SET subject = device_id;
DROP INDEX alerts_one_open;
CREATE UNIQUE INDEX alerts_one_open ON alerts (subject, rule) WHERE status <> 'resolved';
-- Start-up asks, per absence rule and subject, whether the current absence already fired.
CREATE INDEX alerts_fired ON alerts (rule, subject, since_at);

-- Deadlines that cannot be derived from activity: a pending `for`, an escalation step, a
-- correlation. Written in the transaction of the batch that started them, deleted in the one
-- that fired or cancelled them, so each fires exactly once across restarts.
CREATE TABLE deadlines (
    kind          TEXT NOT NULL,
    rule          TEXT NOT NULL,
    subject       TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    due_at        BIGINT NOT NULL,
    alert_id      BIGINT,
    level         BIGINT NOT NULL,
    since_at      BIGINT NOT NULL,
    rule_version  TEXT NOT NULL,
    detail        TEXT NOT NULL,
    PRIMARY KEY (kind, rule, subject)
);

-- The last message of each type from each device ({"type": ms, ...}): absences are derived from
-- it at start-up. It rides on the device row every batch already writes, so an absence costs
-- no statement of its own, never a write per message per rule.
ALTER TABLE devices ADD COLUMN activity TEXT;
