//! The registry as the rules engine sees it.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::engine::Directory;
use crate::domain::care::Resident;
use crate::registry::{Registration, Registry};

impl Directory for Registry {
    fn registration(&self, device: &str) -> Option<Registration> {
        self.get(device)
    }
    fn resident(&self, _id: &str) -> Option<Arc<Resident>> {
        None
    }
    fn residents(&self) -> Vec<Arc<Resident>> {
        Vec::new()
    }
    fn registrations(&self) -> Vec<Registration> {
        Vec::new()
    }
    fn devices_of(&self, _resident: &str) -> Vec<Registration> {
        Vec::new()
    }
    fn report_interval(&self, _device: &str) -> Option<Duration> {
        None
    }
    fn suppression(
        &self,
        _resident: Option<&str>,
        _device: &str,
        _kind: &str,
        _at: DateTime<Utc>,
    ) -> Option<(i64, DateTime<Utc>)> {
        None
    }
    fn version(&self) -> u64 {
        0
    }
}
