//! Ingest: transports that receive device data and hand it to the pipeline.

pub mod embedded;
pub mod mqtt;
pub mod session;
pub mod tcp;
pub mod tls;
