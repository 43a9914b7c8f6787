//! What `anxin test-rules` drives: a world of residents, devices and a virtual clock in which
//! the real rule code runs. The engine's implementation ([`crate::ruletest::harness`]) runs the
//! real pipeline shard and store on an in-memory database; the test-file runner only sees
//! this trait.

use chrono::{DateTime, Utc};

use crate::domain::care::Resident;
use crate::registry::Registration;

/// An alert as a rule test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertView {
    /// Store id.
    pub id: i64,
    /// Rule that opened it.
    pub rule: String,
    /// Alert kind.
    pub kind: String,
    /// Device it is about.
    pub device_id: String,
    /// Resident it is about, if the device has one.
    pub resident_id: Option<String>,
    /// `critical`, `high`, `medium`, `low`.
    pub severity: String,
    /// `open`, `acknowledged`, `dispatched`, `resolved`.
    pub status: String,
    /// 0 until escalated.
    pub escalation_level: i64,
    /// Matches counted on it.
    pub count: i64,
    /// Outcome once resolved (`cleared` when the engine resolved it).
    pub outcome: Option<String>,
    /// When it opened (virtual time).
    pub opened_at: DateTime<Utc>,
    /// Timeline actions in order (`opened`, `event`, `cleared`, `escalated`, …).
    pub timeline: Vec<String>,
}

/// A suppression a test puts on.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSuppression {
    /// Resident covered, or
    pub resident_id: Option<String>,
    /// the device covered.
    pub device_id: Option<String>,
    /// Kinds covered; `None`: all but the never-suppressed four.
    pub kinds: Option<Vec<String>>,
    /// Why.
    pub reason: String,
    /// When it ends.
    pub until: DateTime<Utc>,
}

/// A world a rule test runs in. Errors are the world's own failures (a bad registration, a
/// store error), not failed expectations.
#[allow(async_fn_in_trait)]
pub trait World {
    /// The virtual time now.
    fn now(&self) -> DateTime<Utc>;
    /// Adds or replaces a resident.
    async fn put_resident(&mut self, r: Resident) -> anyhow::Result<()>;
    /// Registers or replaces a device.
    async fn put_device(&mut self, reg: Registration) -> anyhow::Result<()>;
    /// Puts a suppression on; returns its id.
    async fn suppress(&mut self, s: NewSuppression) -> anyhow::Result<i64>;
    /// Moves the virtual clock forward to `t`, firing every deadline due on the way at its own
    /// time (a 12 h absence takes milliseconds). `t` before [`World::now`] is an error.
    async fn advance_to(&mut self, t: DateTime<Utc>) -> anyhow::Result<()>;
    /// Delivers one message of `device` in the canonical JSON format (CONTRACT.md) at the
    /// current virtual time, and waits until it is committed with whatever it triggered.
    /// A message the decoder refuses is an error naming why.
    async fn send(&mut self, device: &str, json: &str) -> anyhow::Result<()>;
    /// An operator acknowledges alert `id`.
    async fn ack(&mut self, id: i64) -> anyhow::Result<()>;
    /// An operator resolves alert `id` with `outcome`.
    async fn resolve(&mut self, id: i64, outcome: &str) -> anyhow::Result<()>;
    /// Every alert, oldest first.
    async fn alerts(&mut self) -> anyhow::Result<Vec<AlertView>>;
}
