//! `anxin-sim`: plays anxin devices over MQTT, in the canonical anxin JSON format, and the
//! 4G TCP device families (watch, gt06, jt808, trv) against the engine's TCP listeners.
//!
//! The binary is a thin CLI over these modules; keeping them in a library lets every part of
//! the format be built and tested, including types no subcommand sends yet.

#![warn(missing_docs)]

pub mod drain;
pub mod load;
pub mod mqtt;
pub mod payload;
pub mod scenario;
pub mod tcp;
