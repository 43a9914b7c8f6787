//! The real [`World`] of `anxin test-rules`: the pipeline's shard and store (SQLite in
//! memory) on a virtual clock — the code that runs in production, minus the broker.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use crate::clock::{ManualClock, SharedClock, from_millis, to_millis};
use crate::config::Config;
use crate::config::live::Live;
use crate::domain::care::{Resident, Suppression};
use crate::pipeline::{Delivery, ManualShard};
use crate::protocol::canonical;
use crate::protocol::profile::ProfileSet;
use crate::registry::{Registration, Registry, UnknownPolicy};
use crate::rules::RuleSet;
use crate::ruletest::world::{AlertView, NewSuppression, World};
use crate::store::{AlertFilter, Store};

const ROOT: &str = "anxin/test";

/// A world in which the rules of one file run.
#[derive(Debug)]
pub struct Harness {
    clock: ManualClock,
    store: Store,
    registry: Registry,
    shard: ManualShard,
}

impl Harness {
    /// A fresh world at `start` running `rules`, with the engine config's device defaults.
    pub async fn new(
        rules: RuleSet,
        engine_config: &Config,
        start: DateTime<Utc>,
    ) -> anyhow::Result<Harness> {
        let clock = ManualClock::new(start);
        let shared: SharedClock = Arc::new(clock.clone());
        let store = Store::connect("sqlite::memory:", 1)
            .await
            .context("opening the in-memory store")?;
        let registry = Registry::new(UnknownPolicy::Accept);
        registry.set_report_interval_defaults(engine_config.report_intervals.clone());
        let live = Live::new(rules, ProfileSet::default(), ROOT, None);
        let mut cfg = engine_config.pipeline.clone();
        cfg.shards = 1;
        let shard = ManualShard::new(cfg, store.clone(), live, shared, registry.clone(), ROOT);
        Ok(Harness {
            clock,
            store,
            registry,
            shard,
        })
    }
}

/// A harness for the rules at `rules_path`, with `engine_config`'s device defaults.
pub async fn real_world(
    rules_path: &Path,
    engine_config: &Config,
    start: DateTime<Utc>,
) -> anyhow::Result<Harness> {
    let src = std::fs::read_to_string(rules_path)
        .with_context(|| format!("reading {}", rules_path.display()))?;
    let rules = RuleSet::parse(rules_path, &src).map_err(|problems| {
        anyhow::anyhow!(
            "{}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    Harness::new(rules, engine_config, start).await
}

impl World for Harness {
    fn now(&self) -> DateTime<Utc> {
        crate::clock::Clock::now(&self.clock)
    }

    async fn put_resident(&mut self, r: Resident) -> anyhow::Result<()> {
        let problems = r.problems();
        if !problems.is_empty() {
            bail!("resident {}: {}", r.id, problems.join("; "));
        }
        self.store
            .put_resident(&r, &crate::domain::card::Card::default(), self.now())
            .await?;
        self.registry.put_resident(r);
        self.shard.step(Vec::new()).await;
        Ok(())
    }

    async fn put_device(&mut self, mut reg: Registration) -> anyhow::Result<()> {
        let problems = reg.problems(1);
        if let Some(p) = problems.first() {
            bail!("device {}: {} {}", reg.id, p.field, p.message);
        }
        reg.normalize();
        self.registry.put([reg]);
        self.shard.step(Vec::new()).await;
        Ok(())
    }

    async fn suppress(&mut self, s: NewSuppression) -> anyhow::Result<i64> {
        let mut sup = Suppression {
            id: 0,
            resident_id: s.resident_id,
            device_id: s.device_id,
            kinds: s.kinds,
            reason: s.reason,
            author: "test".into(),
            created_at: self.now(),
            until: s.until,
            suppressed_count: 0,
        };
        let problems = sup.problems(self.now());
        if !problems.is_empty() {
            bail!("suppression: {}", problems.join("; "));
        }
        sup.id = self.store.create_suppression(&sup).await?;
        self.registry.put_suppression(sup.clone());
        self.shard.step(Vec::new()).await;
        Ok(sup.id)
    }

    async fn advance_to(&mut self, t: DateTime<Utc>) -> anyhow::Result<()> {
        if t < self.now() {
            bail!("time cannot go back: {} is before {}", t, self.now());
        }
        let target = to_millis(t);
        // Each deadline fires at its own time, so what it does is stamped then.
        let mut last = None;
        while let Some(due) = self.shard.next_due().filter(|d| *d <= target) {
            if last == Some(due) && self.shard.next_due() == Some(due) {
                // Fired and still there: step the clock past it rather than loop.
                self.clock.set(from_millis(due + 1));
            } else {
                self.clock.set(from_millis(due.max(to_millis(self.now()))));
            }
            self.shard.step(Vec::new()).await;
            last = Some(due);
        }
        self.clock.set(t);
        self.shard.step(Vec::new()).await;
        Ok(())
    }

    async fn send(&mut self, device: &str, json: &str) -> anyhow::Result<()> {
        let topic = format!("{ROOT}/devices/{device}/events");
        let now = self.now();
        for item in canonical::decode(ROOT, &topic, json.as_bytes(), now).items {
            if let Err(r) = item {
                bail!(
                    "the engine refuses {json}: {} ({})",
                    r.detail,
                    r.reason.as_str()
                );
            }
        }
        let delivery = Delivery::Mqtt {
            pos: 0,
            generation: 0,
            topic,
            payload: bytes::Bytes::copy_from_slice(json.as_bytes()),
            size: json.len(),
            received_at: now,
            dup: false,
            retain: false,
            pkid: 0,
        };
        self.shard.step(vec![delivery]).await;
        Ok(())
    }

    async fn ack(&mut self, id: i64) -> anyhow::Result<()> {
        self.store.acknowledge(id, "operator", self.now()).await?;
        Ok(())
    }

    async fn resolve(&mut self, id: i64, outcome: &str) -> anyhow::Result<()> {
        self.store
            .resolve(id, "operator", self.now(), outcome, None)
            .await?;
        Ok(())
    }

    async fn alerts(&mut self) -> anyhow::Result<Vec<AlertView>> {
        let (mut alerts, _) = self
            .store
            .list_alerts(&AlertFilter {
                limit: 5000,
                ..AlertFilter::default()
            })
            .await?;
        alerts.sort_by_key(|a| a.id);
        let mut out = Vec::new();
        for a in alerts {
            let (_, timeline) = self.store.get_alert(a.id).await?;
            out.push(AlertView {
                id: a.id,
                rule: a.rule,
                kind: a.kind,
                device_id: a.device_id,
                resident_id: a.resident_id,
                severity: a.severity,
                status: a.status,
                escalation_level: a.escalation_level,
                count: a.count,
                outcome: a.outcome,
                opened_at: a.opened_at,
                timeline: timeline.into_iter().map(|t| t.action).collect(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    async fn world() -> Harness {
        let src = include_str!("../../config/rules.toml");
        let rules = RuleSet::parse(Path::new("config/rules.toml"), src).unwrap();
        let cfg = Config {
            report_intervals: crate::config::default_report_intervals(),
            ..Config::default()
        };
        let mut w = Harness::new(rules, &cfg, t("2026-03-02T08:00:00+08:00"))
            .await
            .unwrap();
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("lives_alone".to_owned(), "true".to_owned());
        w.put_resident(Resident {
            id: "r1".into(),
            name: "Li Hua".into(),
            region: "tianhe".into(),
            time_zone: "Asia/Shanghai".into(),
            labels,
            thresholds: Default::default(),
        })
        .await
        .unwrap();
        for (id, ty, room) in [("p1", "pendant", None), ("pir1", "pir", Some("hall"))] {
            w.put_device(Registration {
                id: id.into(),
                device_type: Some(ty.into()),
                room: room.map(str::to_owned),
                resident_id: Some("r1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        w
    }

    fn of<'a>(alerts: &'a [AlertView], rule: &str) -> Vec<&'a AlertView> {
        alerts.iter().filter(|a| a.rule == rule).collect()
    }

    #[tokio::test]
    async fn sos_escalates_by_the_table_until_acknowledged() {
        let mut w = world().await;
        w.send("p1", r#"{"type":"sos"}"#).await.unwrap();
        let start = w.now();
        w.advance_to(start + Duration::seconds(61)).await.unwrap();
        let a = w.alerts().await.unwrap();
        assert_eq!(of(&a, "sos")[0].escalation_level, 1, "{a:?}");
        w.advance_to(start + Duration::seconds(181)).await.unwrap();
        let a = w.alerts().await.unwrap();
        assert_eq!(of(&a, "sos")[0].escalation_level, 2, "{a:?}");
        // A second one, acknowledged in time, stays at 0.
        w.send("pir1", r#"{"type":"sos"}"#).await.unwrap();
        let id = of(&w.alerts().await.unwrap(), "sos")[1].id;
        w.ack(id).await.unwrap();
        w.advance_to(w.now() + Duration::minutes(10)).await.unwrap();
        let a = w.alerts().await.unwrap();
        assert_eq!(of(&a, "sos")[1].escalation_level, 0, "{a:?}");
    }

    #[tokio::test]
    async fn a_vital_sign_must_last_and_clears_with_hysteresis() {
        let mut w = world().await;
        let start = w.now();
        w.send("p1", r#"{"type":"vitals","heart_rate":130}"#)
            .await
            .unwrap();
        w.advance_to(start + Duration::minutes(2)).await.unwrap();
        w.send("p1", r#"{"type":"vitals","spo2":97}"#)
            .await
            .unwrap();
        w.advance_to(start + Duration::minutes(4)).await.unwrap();
        assert!(of(&w.alerts().await.unwrap(), "heart_rate_high").is_empty());
        w.advance_to(start + Duration::minutes(5)).await.unwrap();
        let a = w.alerts().await.unwrap();
        let hr = of(&a, "heart_rate_high");
        assert_eq!(hr.len(), 1, "{a:?}");
        assert_eq!(hr[0].opened_at, start + Duration::minutes(5));
        w.send("p1", r#"{"type":"vitals","heart_rate":105}"#)
            .await
            .unwrap();
        let a = w.alerts().await.unwrap();
        let hr = of(&a, "heart_rate_high")[0];
        assert_eq!(
            (hr.status.as_str(), hr.outcome.as_deref()),
            ("resolved", Some("cleared")),
            "{a:?}"
        );
        // Cancelled before its time: nothing.
        w.send("p1", r#"{"type":"vitals","heart_rate":40}"#)
            .await
            .unwrap();
        w.advance_to(w.now() + Duration::minutes(3)).await.unwrap();
        w.send("p1", r#"{"type":"vitals","heart_rate":60}"#)
            .await
            .unwrap();
        w.advance_to(w.now() + Duration::minutes(10)).await.unwrap();
        assert!(of(&w.alerts().await.unwrap(), "heart_rate_low").is_empty());
    }

    #[tokio::test]
    async fn inactivity_waits_for_the_morning_and_motion_clears_it() {
        let mut w = world().await;
        // Last movement 16:00 local: 12 h later is 04:00, held until 06:00.
        w.advance_to(t("2026-03-02T16:00:00+08:00")).await.unwrap();
        w.send("pir1", r#"{"type":"motion"}"#).await.unwrap();
        w.advance_to(t("2026-03-03T05:59:00+08:00")).await.unwrap();
        assert!(of(&w.alerts().await.unwrap(), "inactivity").is_empty());
        w.advance_to(t("2026-03-03T06:00:00+08:00")).await.unwrap();
        let a = w.alerts().await.unwrap();
        let ina = of(&a, "inactivity");
        assert_eq!(ina.len(), 1, "{a:?}");
        assert_eq!(ina[0].opened_at, t("2026-03-03T06:00:00+08:00"));
        w.send("pir1", r#"{"type":"motion"}"#).await.unwrap();
        let a = w.alerts().await.unwrap();
        assert_eq!(of(&a, "inactivity")[0].status, "resolved", "{a:?}");
    }
}
