//! The part of the configuration a reload swaps (SIGHUP or `POST /api/config/reload`): rules
//! and vendor profiles. A reload is validated in full first and swapped in one step, so a
//! batch sees either the old set or the new one, never a mix; the rest of the configuration
//! (store, listeners, broker) takes effect at the next start.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::reader::Problem;
use crate::protocol::profile::ProfileSet;
use crate::rules::RuleSet;

/// Rules and profiles in force.
#[derive(Debug, Default)]
pub struct Reloadable {
    /// Alert rules.
    pub rules: RuleSet,
    /// Vendor JSON profiles.
    pub profiles: ProfileSet,
    /// 1 at start, +1 per successful reload.
    pub generation: u64,
}

/// The swappable configuration, shared by the pipeline, MQTT ingest and the API.
#[derive(Debug)]
pub struct Live {
    current: RwLock<Arc<Reloadable>>,
    filters: watch::Sender<Vec<String>>,
    topic_root: String,
    /// The config file a reload reads again (`None`: defaults and environment only).
    source: Option<PathBuf>,
    /// One reload at a time, so two reloads cannot interleave read and swap.
    reloading: std::sync::Mutex<()>,
}

/// What a successful reload put in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// The new generation.
    pub generation: u64,
    /// Number of rules.
    pub rules: usize,
    /// Profile names.
    pub profiles: Vec<String>,
}

impl Live {
    /// Starts with `rules` and `profiles`; `topic_root` gives the canonical filter, always
    /// subscribed first.
    pub fn new(
        rules: RuleSet,
        profiles: ProfileSet,
        topic_root: &str,
        source: Option<PathBuf>,
    ) -> Arc<Live> {
        let (filters, _) = watch::channel(Self::filters_of(topic_root, &profiles));
        Arc::new(Live {
            current: RwLock::new(Arc::new(Reloadable {
                rules,
                profiles,
                generation: 1,
            })),
            filters,
            topic_root: topic_root.to_owned(),
            source,
            reloading: std::sync::Mutex::new(()),
        })
    }

    fn filters_of(topic_root: &str, profiles: &ProfileSet) -> Vec<String> {
        let mut f = vec![format!("{topic_root}/devices/+/events")];
        f.extend(profiles.filters());
        f
    }

    /// What is in force now; hold the `Arc` for a whole batch so it sees one version.
    pub fn current(&self) -> Arc<Reloadable> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts validated rules and profiles in force and publishes the new subscription list.
    /// Returns the new generation.
    pub fn swap(&self, rules: RuleSet, profiles: ProfileSet) -> u64 {
        let filters = Self::filters_of(&self.topic_root, &profiles);
        let generation = {
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            let generation = cur.generation + 1;
            *cur = Arc::new(Reloadable {
                rules,
                profiles,
                generation,
            });
            generation
        };
        self.filters.send_replace(filters);
        generation
    }

    /// Reads the configuration again (file, environment, rules, profiles) and, when all of it
    /// is valid, puts the new rules and profiles in force. On any problem nothing changes and
    /// every problem is returned.
    pub fn reload(&self) -> Result<ReloadReport, Vec<Problem>> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        match super::load(self.source.as_deref(), &super::process_env) {
            Ok(loaded) => {
                if loaded.config.mqtt.topic_root != self.topic_root {
                    tracing::warn!(
                        "The topic root changed in the config; it takes effect at the next start"
                    );
                }
                let rules = loaded.rules.rules.len();
                let profiles: Vec<String> = loaded
                    .profiles
                    .names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                let generation = self.swap(loaded.rules, loaded.profiles);
                metrics::counter!(crate::telemetry::names::CONFIG_RELOADS, "result" => "ok")
                    .increment(1);
                tracing::info!(
                    generation,
                    rules,
                    profiles = ?profiles,
                    "Configuration reloaded (rules and profiles; other settings apply at the next start)"
                );
                Ok(ReloadReport {
                    generation,
                    rules,
                    profiles,
                })
            }
            Err(problems) => {
                metrics::counter!(crate::telemetry::names::CONFIG_RELOADS, "result" => "refused")
                    .increment(1);
                for p in &problems {
                    tracing::error!("Reload refused: {p}");
                }
                tracing::error!(
                    problems = problems.len(),
                    "Reload refused; the previous rules and profiles stay in force"
                );
                Err(problems)
            }
        }
    }

    /// The MQTT subscriptions wanted: the canonical filter, then one per profile.
    pub fn filters(&self) -> watch::Receiver<Vec<String>> {
        self.filters.subscribe()
    }
}
