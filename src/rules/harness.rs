//! The real world `anxin test-rules` runs cases in: the engine's rule code, store and
//! deadlines on a virtual clock.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::rules::world::{AlertView, NewSuppression, World};

/// A fresh world for one test case: the rules of `rules_path` compiled by the engine, the
/// store on an in-memory database, the virtual clock at `start`, and the engine settings of
/// `engine_config` that rules depend on (the `[devices] report_interval` defaults per device
/// type). `anxin test-rules` calls it once per case, so no state passes between cases; the
/// world owns what it keeps of the arguments (`use<>`: it borrows none of them).
///
/// Not wired yet: the engine side (rule evaluator, durable deadlines, the harness) replaces
/// this body and the placeholder world below; until then every case fails with this error.
pub async fn real_world(
    rules_path: &Path,
    engine_config: &Config,
    start: DateTime<Utc>,
) -> anyhow::Result<impl World + use<>> {
    let _ = (rules_path, engine_config, start);
    // `bail!`, with the world type spelled out so the opaque return type has one.
    Err::<Unwired, _>(anyhow::anyhow!("the rule harness is not wired yet"))
}

/// The world type [`real_world`] names until the harness exists. It has no values, so none of
/// its methods can ever run.
enum Unwired {}

impl World for Unwired {
    fn now(&self) -> DateTime<Utc> {
        match *self {}
    }
    async fn put_resident(&mut self, _: crate::domain::care::Resident) -> anyhow::Result<()> {
        match *self {}
    }
    async fn put_device(&mut self, _: crate::registry::Registration) -> anyhow::Result<()> {
        match *self {}
    }
    async fn suppress(&mut self, _: NewSuppression) -> anyhow::Result<i64> {
        match *self {}
    }
    async fn advance_to(&mut self, _: DateTime<Utc>) -> anyhow::Result<()> {
        match *self {}
    }
    async fn send(&mut self, _: &str, _: &str) -> anyhow::Result<()> {
        match *self {}
    }
    async fn ack(&mut self, _: i64) -> anyhow::Result<()> {
        match *self {}
    }
    async fn resolve(&mut self, _: i64, _: &str) -> anyhow::Result<()> {
        match *self {}
    }
    async fn alerts(&mut self) -> anyhow::Result<Vec<AlertView>> {
        match *self {}
    }
}
