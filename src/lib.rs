//! anxin (安心): telemetry ingestion and alerting for home-care call centres.
//!
//! The data path, in module order (see ARCHITECTURE.md):
//!
//! - [`ingest`] — transports: MQTT (rumqttc, manual acks after commit), embedded broker;
//! - [`protocol`] — pure decoders: bytes/JSON + receive time → [`event::Event`]s or rejections;
//! - [`pipeline`] — shards by device, group commit, rules, ack release in receive order;
//! - [`store`] — SQLite or PostgreSQL behind one façade, one transaction per batch;
//! - [`api`] — the operator API: alerts, live feed, health, metrics;
//! - [`feed`] — committed alert changes, numbered and kept for `Last-Event-ID` replay;
//! - [`outbox`] — webhook notifications of critical alerts and escalations, from the store;
//! - [`config`], [`telemetry`], [`clock`], [`app`] (wiring), [`cli`].

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod event;
pub mod feed;
pub mod ingest;
pub mod outbox;
pub mod pipeline;
pub mod protocol;
pub mod registry;
pub mod rules;
pub mod ruletest;
pub mod store;
pub mod telemetry;
