//! The registry as the rules engine sees it.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::engine::Directory;
use crate::domain::care::Resident;
use crate::registry::{Registration, Registry};

impl Directory for Registry {
    fn registration(&self, device: &str) -> Option<Arc<Registration>> {
        self.get_shared(device)
    }
    fn resident(&self, id: &str) -> Option<Arc<Resident>> {
        Registry::resident(self, id)
    }
    fn residents(&self) -> Vec<Arc<Resident>> {
        Registry::residents(self)
    }
    fn registrations(&self) -> Vec<Registration> {
        Registry::registrations(self)
    }
    fn devices_of(&self, resident: &str) -> Vec<Registration> {
        Registry::devices_of(self, resident)
    }
    fn report_interval(&self, device: &str) -> Option<Duration> {
        Registry::report_interval(self, device)
    }
    fn suppression(
        &self,
        resident: Option<&str>,
        device: &str,
        kind: &str,
        at: DateTime<Utc>,
    ) -> Option<(i64, DateTime<Utc>)> {
        // The one that covers longest: an absence held by it is looked at again once.
        self.suppressions()
            .into_iter()
            .filter(|s| s.covers(resident, device, kind, at))
            .map(|s| (s.id, s.until))
            .max_by_key(|(_, until)| *until)
    }
    fn version(&self) -> u64 {
        Registry::version(self)
    }
}
