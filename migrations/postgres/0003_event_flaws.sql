-- Values that came with an event but could not be used (a bad ts, seq or field of an alarm,
-- a device clock years off, a retained replay): JSON array of {field, value, problem}, NULL
-- when there is none. The event stands without them (DESIGN.md guarantee 5).
ALTER TABLE events ADD COLUMN flaws TEXT;
