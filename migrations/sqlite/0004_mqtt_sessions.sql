-- Broker sessions the engine has had: one row per (client id, broker host:port), written on
-- every CONNACK. A CONNACK without a session where this table says we had one means the
-- broker lost what it held for us (broker_session_lost alert). The embedded broker is never
-- recorded: it keeps nothing across restarts by design.
CREATE TABLE mqtt_sessions (
    client_id  TEXT NOT NULL,
    broker     TEXT NOT NULL,
    first_at   INTEGER NOT NULL,
    last_at    INTEGER NOT NULL,
    PRIMARY KEY (client_id, broker)
);
