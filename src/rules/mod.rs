//! Rules (`config/rules.toml`, CONTRACT.md "Rules file"): what operators write, parsed and
//! checked with file and line; [`engine`] evaluates them against events and due deadlines.

pub use crate::domain::alert::Severity;

use std::collections::BTreeMap;

use chrono::Duration;
use sha2::{Digest, Sha256};

use crate::event::{Event, EventType};

mod directory;
pub mod engine;
pub mod window;

pub use window::Window;

/// A comparison in a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl Op {
    const NAMES: [(&'static str, Op); 6] = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        (">=", Op::Ge),
        ("<", Op::Lt),
        ("<=", Op::Le),
    ];

    /// Parses the operator as written.
    pub fn parse(s: &str) -> Option<Op> {
        Op::NAMES.iter().find(|(n, _)| *n == s).map(|(_, o)| *o)
    }
}

/// The literal a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// For number fields.
    Number(f64),
    /// For enum and text fields (only `==` / `!=`).
    Text(String),
    /// For true/false fields (only `==` / `!=`).
    Bool(bool),
}

/// `field op value`; an event without the field does not match.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Field name from the event type's schema.
    pub field: String,
    /// Comparison.
    pub op: Op,
    /// Right-hand side.
    pub value: Literal,
    /// A resident threshold that replaces a number `value` for residents who have it.
    pub override_key: Option<String>,
}

impl Condition {
    /// Whether `e` satisfies it, with `thresholds` the resident's overrides; `None` when the
    /// event does not carry the field (it says nothing about this condition).
    pub fn eval(&self, e: &Event, thresholds: Option<&BTreeMap<String, f64>>) -> Option<bool> {
        let cmp = |ord: Option<std::cmp::Ordering>| {
            use std::cmp::Ordering::*;
            match (self.op, ord) {
                (_, None) => false,
                (Op::Eq, Some(o)) => o == Equal,
                (Op::Ne, Some(o)) => o != Equal,
                (Op::Gt, Some(o)) => o == Greater,
                (Op::Ge, Some(o)) => o != Less,
                (Op::Lt, Some(o)) => o == Less,
                (Op::Le, Some(o)) => o != Greater,
            }
        };
        match &self.value {
            Literal::Number(rhs) => {
                let lhs = e.number(&self.field)?;
                let rhs = self
                    .override_key
                    .as_ref()
                    .and_then(|k| thresholds?.get(k).copied())
                    .unwrap_or(*rhs);
                Some(cmp(lhs.partial_cmp(&rhs)))
            }
            Literal::Bool(rhs) => {
                let lhs = e.fields.get(&self.field)?.as_bool()?;
                Some(matches!(self.op, Op::Eq | Op::Ne) && cmp(Some(lhs.cmp(rhs))))
            }
            Literal::Text(rhs) => {
                let lhs = e.text(&self.field)?;
                Some(matches!(self.op, Op::Eq | Op::Ne) && cmp(Some(lhs.cmp(rhs.as_str()))))
            }
        }
    }
}

/// `key = "value"` pairs that must all match; a value written `"!x"` matches anything but
/// `x` (a missing label included).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    /// (key, value, negated)
    pub pairs: Vec<(String, String, bool)>,
}

impl Selector {
    /// Whether the labels `get` looks up match every pair.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.pairs.iter().all(|(k, v, neg)| {
            let has = get(k) == Some(v.as_str());
            has != *neg
        })
    }

    /// Whether it selects anything at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The event types an absence watches.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeSet {
    /// Every message, heartbeats included (`absent = ["any"]`).
    Any,
    /// Only these.
    Types(Vec<EventType>),
}

impl TypeSet {
    /// Whether an event of type `t` counts.
    pub fn contains(&self, t: EventType) -> bool {
        match self {
            TypeSet::Any => true,
            TypeSet::Types(v) => v.contains(&t),
        }
    }
}

/// What an absence is counted for (`per`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// All of a resident's (selected) devices together.
    Resident,
    /// Each device alone.
    Device,
}

/// Slack on top of a device's reporting interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grace {
    /// A share of the interval (`"10%"` → 0.1).
    Share(f64),
    /// A fixed time.
    Fixed(Duration),
}

/// How long an absence may last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    /// A fixed time.
    Fixed(Duration),
    /// The device's reporting interval plus grace.
    ReportInterval(Grace),
}

impl After {
    /// The allowance for a device whose interval is `interval` (None: no interval known, so
    /// no absence can be counted for it).
    pub fn resolve(&self, interval: Option<Duration>) -> Option<Duration> {
        match *self {
            After::Fixed(d) => Some(d),
            After::ReportInterval(g) => {
                let i = interval?;
                Some(match g {
                    Grace::Share(f) => {
                        i + Duration::milliseconds((i.num_milliseconds() as f64 * f) as i64)
                    }
                    Grace::Fixed(d) => i + d,
                })
            }
        }
    }
}

/// What makes a rule fire.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// An event of `event` whose conditions hold (for `hold` if given).
    Event {
        /// Event type selected.
        event: EventType,
        /// All must hold.
        when: Vec<Condition>,
        /// When not empty, at least one must hold too.
        any_of: Vec<Condition>,
        /// `for`: how long the condition must hold before the alert opens.
        hold: Option<Duration>,
        /// `clear`: conditions that end it (all must hold; empty: nothing clears it).
        clear: Vec<Condition>,
    },
    /// Nothing of `types` for `after`.
    Absent {
        /// Watched types.
        types: TypeSet,
        /// Allowance.
        after: After,
        /// Counted for.
        per: Per,
    },
    /// After an alert of one of `rules` opens, nothing of `types` from the household for
    /// `after` raises that alert's escalation level by `raise`.
    Follows {
        /// Rules whose alert starts it.
        rules: Vec<String>,
        /// Watched types.
        types: TypeSet,
        /// Allowance.
        after: Duration,
        /// Escalation levels added.
        raise: i64,
    },
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name; one open alert per (subject, rule).
    pub name: String,
    /// Alert kind (CONTRACT.md).
    pub kind: String,
    /// Alert severity.
    pub severity: Severity,
    /// Human title shown to operators.
    pub title: String,
    /// What makes it fire.
    pub trigger: Trigger,
    /// Resident labels that must match.
    pub residents: Selector,
    /// Device `type`, `room` and labels that must match.
    pub devices: Selector,
    /// Daily window in the resident's time zone.
    pub active: Option<Window>,
    /// Escalation steps (cumulative from opening) replacing the `[escalation]` table's.
    pub escalate: Option<Vec<Duration>>,
    /// Hash of everything above: an alert records the version that opened it, and a reload
    /// keeps the pending state of rules whose version did not change.
    pub version: String,
}

impl Rule {
    /// Whether `e`'s type and conditions trigger this rule, ignoring selectors, windows and
    /// `for` (`thresholds`: the resident's overrides).
    pub fn matches_with(&self, e: &Event, thresholds: Option<&BTreeMap<String, f64>>) -> bool {
        match &self.trigger {
            Trigger::Event {
                event,
                when,
                any_of,
                ..
            } => {
                *event == e.event_type
                    && when.iter().all(|c| c.eval(e, thresholds) == Some(true))
                    && (any_of.is_empty()
                        || any_of.iter().any(|c| c.eval(e, thresholds) == Some(true)))
            }
            _ => false,
        }
    }

    /// The hit of this rule for `device` with escalation `steps`, before the engine adds
    /// what it knows about the household.
    pub fn hit(&self, device: &str, steps: &[Duration]) -> crate::store::RuleHit {
        crate::store::RuleHit {
            rule: self.name.clone(),
            kind: self.kind.clone(),
            severity: self.severity,
            title: self.title.clone(),
            once: false,
            version: self.version.clone(),
            subject: device.to_owned(),
            partition: device.to_owned(),
            since: None,
            late: false,
            escalate: steps.iter().map(|d| d.num_milliseconds()).collect(),
            follows: Vec::new(),
            hold: None,
        }
    }

    /// [`Rule::matches_with`] without a resident.
    pub fn matches(&self, e: &Event) -> bool {
        self.matches_with(e, None)
    }

    /// The event type of an event rule.
    pub fn event(&self) -> Option<EventType> {
        match &self.trigger {
            Trigger::Event { event, .. } => Some(*event),
            _ => None,
        }
    }

    /// Sets [`Rule::version`] from everything else in the rule.
    pub fn compute_version(&mut self) {
        self.version.clear();
        let digest = Sha256::digest(format!("{self:?}").as_bytes());
        self.version = hex::encode(&digest[..6]);
    }
}

/// The compiled rules, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// `[escalation]`: default steps per severity.
    pub escalation: Vec<(Severity, Vec<Duration>)>,
}

impl RuleSet {
    /// Immediate rules that `e` triggers, without residents, devices or windows.
    pub fn matching<'a>(&'a self, e: &'a Event) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.matches(e))
    }

    /// What `e` triggers through immediate rules without selectors, windows or `for`, as the
    /// store records it (benches and store tests; the engine evaluates everything).
    pub fn hits(&self, e: &Event) -> Vec<crate::store::RuleHit> {
        self.matching(e)
            .filter(|r| {
                matches!(r.trigger, Trigger::Event { hold: None, .. })
                    && r.residents.is_empty()
                    && r.devices.is_empty()
                    && r.active.is_none()
            })
            .map(|r| r.hit(&e.device_id, self.steps(r)))
            .collect()
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Escalation steps of `rule`: its own, else its severity's from `[escalation]`.
    pub fn steps<'a>(&'a self, rule: &'a Rule) -> &'a [Duration] {
        if let Some(s) = &rule.escalate {
            return s;
        }
        self.escalation
            .iter()
            .find(|(sev, _)| *sev == rule.severity)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[])
    }
}
