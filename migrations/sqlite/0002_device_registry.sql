-- Device registry: a device is "registered" when an operator or installer added it; devices
-- only ever heard from stay unregistered and follow the unknown-device policy (CONTRACT.md).
-- first_seen / last_seen are 0 for a registered device never heard from yet.
ALTER TABLE devices ADD COLUMN registered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN family TEXT;
ALTER TABLE devices ADD COLUMN device_type TEXT;
ALTER TABLE devices ADD COLUMN room TEXT;
ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN resident_id TEXT;
-- Offset of the device's clock from UTC, for watches that send local time.
ALTER TABLE devices ADD COLUMN tz_offset_minutes INTEGER;
ALTER TABLE devices ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX devices_resident ON devices (resident_id);
