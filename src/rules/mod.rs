//! Rules v1: immediate match on event type and field conditions (`config/rules.toml`).

pub use crate::domain::alert::Severity;

use std::path::Path;

use crate::config::reader::{Ctx, Problem, Section};
use crate::event::{Event, EventType, FieldKind};

pub mod harness;
pub mod runner;
pub mod testfile;
pub mod world;

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

    fn parse(s: &str) -> Option<Op> {
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
}

impl Condition {
    fn holds(&self, e: &Event) -> bool {
        match &self.value {
            Literal::Number(rhs) => match e.number(&self.field) {
                Some(lhs) => match self.op {
                    Op::Eq => lhs == *rhs,
                    Op::Ne => lhs != *rhs,
                    Op::Gt => lhs > *rhs,
                    Op::Ge => lhs >= *rhs,
                    Op::Lt => lhs < *rhs,
                    Op::Le => lhs <= *rhs,
                },
                None => false,
            },
            Literal::Bool(rhs) => match e.fields.get(&self.field).and_then(|v| v.as_bool()) {
                Some(lhs) => match self.op {
                    Op::Eq => lhs == *rhs,
                    Op::Ne => lhs != *rhs,
                    _ => false,
                },
                None => false,
            },
            Literal::Text(rhs) => match e.text(&self.field) {
                Some(lhs) => match self.op {
                    Op::Eq => lhs == rhs,
                    Op::Ne => lhs != rhs,
                    _ => false,
                },
                None => false,
            },
        }
    }
}

/// One rule: events of `event` type for which every condition holds open (or count on) an
/// alert of `kind` for the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name; one open alert per (device, rule).
    pub name: String,
    /// Event type selected.
    pub event: EventType,
    /// Alert kind (CONTRACT.md), defaulting to the event type's name.
    pub kind: String,
    /// Alert severity.
    pub severity: Severity,
    /// Human title shown to operators.
    pub title: String,
    /// All must hold.
    pub conditions: Vec<Condition>,
    /// When not empty, at least one must hold too (`when_any`).
    pub any_of: Vec<Condition>,
}

impl Rule {
    /// Whether `e` triggers this rule.
    pub fn matches(&self, e: &Event) -> bool {
        self.event == e.event_type
            && self.conditions.iter().all(|c| c.holds(e))
            && (self.any_of.is_empty() || self.any_of.iter().any(|c| c.holds(e)))
    }
}

/// The compiled rules, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// Rules in file order.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Rules that `e` triggers.
    pub fn matching<'a>(&'a self, e: &'a Event) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.matches(e))
    }

    /// What `e` triggers, as the store records it.
    pub fn hits(&self, e: &Event) -> Vec<crate::store::RuleHit> {
        self.matching(e)
            .map(|r| crate::store::RuleHit {
                rule: r.name.clone(),
                kind: r.kind.clone(),
                severity: r.severity,
                title: r.title.clone(),
                once: false,
            })
            .collect()
    }

    /// Parses and validates a rules file, reporting every problem.
    pub fn parse(file: &Path, src: &str) -> Result<RuleSet, Vec<Problem>> {
        let doc = match toml_edit::Document::parse(src) {
            Ok(d) => d,
            Err(e) => {
                let ctx = Ctx::new(file, src);
                ctx.problem(
                    ctx.line_of(e.span()),
                    "-",
                    format!("not valid TOML: {}", e.message()),
                );
                return Err(ctx.into_problems());
            }
        };
        let ctx = Ctx::new(file, src);
        let mut root = Section::new(&ctx, doc.as_table(), String::new(), 1);
        let mut rules = Vec::new();
        for s in root.tables("rule") {
            if let Some(r) = read_rule(s) {
                if rules.iter().any(|o: &Rule| o.name == r.name) {
                    ctx.problem(0, format!("rule {}", r.name), "duplicate rule name");
                }
                rules.push(r);
            }
        }
        root.finish();
        let problems = ctx.into_problems();
        if problems.is_empty() {
            Ok(RuleSet { rules })
        } else {
            Err(problems)
        }
    }
}

fn read_rule(mut s: Section<'_, '_>) -> Option<Rule> {
    let line = s.line();
    let name = s.string("name").map(|(n, l)| {
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            s.problem(
                l,
                "name",
                format!("{n:?}: use letters, digits, '_' and '-'"),
            );
        }
        n
    });
    if name.is_none() {
        s.problem(line, "name", "missing");
    }
    let event = match s.string("event") {
        Some((e, l)) => match EventType::parse(&e) {
            Some(t) => Some(t),
            None => {
                s.problem(l, "event", format!("unknown event type {e:?}"));
                None
            }
        },
        None => {
            s.problem(line, "event", "missing");
            None
        }
    };
    let severity = match s.string("severity") {
        Some((v, l)) => match Severity::parse(&v) {
            Some(sev) => Some(sev),
            None => {
                s.problem(
                    l,
                    "severity",
                    format!("{v:?} is not one of critical, high, medium, low"),
                );
                None
            }
        },
        None => {
            s.problem(line, "severity", "missing");
            None
        }
    };
    let title = s.string("title").map(|(t, _)| t);
    let kind = s.string("kind").map(|(k, _)| k);
    let conditions = read_conditions(&mut s, "when", event);
    let any_of = read_conditions(&mut s, "when_any", event);
    s.finish();
    let event = event?;
    Some(Rule {
        kind: kind.unwrap_or_else(|| event.name().to_owned()),
        title: title.unwrap_or_else(|| format!("{} alarm", event.name())),
        name: name?,
        event,
        severity: severity?,
        conditions,
        any_of,
    })
}

fn read_conditions(
    s: &mut Section<'_, '_>,
    key: &'static str,
    event: Option<EventType>,
) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for mut c in s.tables(key) {
        let cl = c.line();
        let field = c.string("field");
        let op = c.string("op");
        let value = c.value("value");
        let (Some((field, fl)), Some((op, ol)), Some((value, vl))) = (field, op, value) else {
            c.problem(cl, "", "a condition needs field, op and value");
            c.finish();
            continue;
        };
        let Some(op) = Op::parse(&op) else {
            c.problem(
                ol,
                "op",
                format!("{op:?} is not one of ==, !=, >, >=, <, <="),
            );
            c.finish();
            continue;
        };
        let Some(spec) = event.and_then(|t| t.field(&field)) else {
            if let Some(t) = event {
                let known: Vec<_> = t.fields().iter().map(|f| f.name).collect();
                c.problem(
                    fl,
                    "field",
                    format!("{t} has no field {field:?} (it has: {})", known.join(", ")),
                );
            }
            c.finish();
            continue;
        };
        let literal = match spec.kind {
            FieldKind::Number { .. } | FieldKind::Integer { .. } => {
                match value.as_float().or(value.as_integer().map(|i| i as f64)) {
                    Some(n) => Some(Literal::Number(n)),
                    None => {
                        c.problem(
                            vl,
                            "value",
                            format!("{field} is a number; found {}", value.type_name()),
                        );
                        None
                    }
                }
            }
            FieldKind::Enum(allowed) => match value.as_str() {
                Some(v) if allowed.contains(&v) => Some(Literal::Text(v.to_owned())),
                _ => {
                    c.problem(
                        vl,
                        "value",
                        format!("{field} is one of {}", allowed.join(", ")),
                    );
                    None
                }
            },
            FieldKind::Bool => match value.as_bool() {
                Some(b) => Some(Literal::Bool(b)),
                None => {
                    c.problem(
                        vl,
                        "value",
                        format!("{field} is true or false; found {}", value.type_name()),
                    );
                    None
                }
            },
            FieldKind::List { .. } => {
                c.problem(
                    fl,
                    "field",
                    format!("{field} is a list and cannot be compared"),
                );
                None
            }
            FieldKind::Text { .. } => match value.as_str() {
                Some(v) => Some(Literal::Text(v.to_owned())),
                None => {
                    c.problem(
                        vl,
                        "value",
                        format!("{field} is text; found {}", value.type_name()),
                    );
                    None
                }
            },
        };
        if let Some(Literal::Text(_) | Literal::Bool(_)) = literal
            && !matches!(op, Op::Eq | Op::Ne)
        {
            c.problem(ol, "op", format!("{field} is not a number: use == or !="));
        } else if let Some(value) = literal {
            conditions.push(Condition { field, op, value });
        }
        c.finish();
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::canonical;

    fn event(json: &str) -> Event {
        let d = canonical::decode(
            "r",
            "r/devices/d/events",
            json.as_bytes(),
            chrono::DateTime::from_timestamp(0, 0).unwrap(),
        );
        d.items.into_iter().next().unwrap().unwrap()
    }

    #[test]
    fn the_shipped_rules_parse_and_match_the_contract_defaults() {
        let src = include_str!("../../config/rules.toml");
        let rules = RuleSet::parse(Path::new("config/rules.toml"), src).unwrap();
        let names = |json: &str| -> Vec<String> {
            let e = event(json);
            rules
                .matching(&e)
                .map(|r| r.severity.as_str().to_owned() + ":" + &r.kind)
                .collect()
        };
        assert_eq!(names(r#"{"type":"sos"}"#), ["critical:sos"]);
        assert_eq!(
            names(r#"{"type":"smoke","state":"alarm"}"#),
            ["critical:smoke"]
        );
        assert!(names(r#"{"type":"smoke","state":"test"}"#).is_empty());
        assert_eq!(names(r#"{"type":"gas","state":"alarm"}"#), ["critical:gas"]);
        assert_eq!(names(r#"{"type":"water","state":"leak"}"#), ["high:water"]);
        assert_eq!(
            names(r#"{"type":"vitals","heart_rate":121}"#),
            ["high:vitals"]
        );
        assert!(names(r#"{"type":"vitals","heart_rate":120}"#).is_empty());
        assert!(names(r#"{"type":"heartbeat"}"#).is_empty());
    }

    #[test]
    fn every_rule_problem_is_reported() {
        let src = r#"
[[rule]]
name = "a"
event = "sos"
severity = "urgent"

[[rule]]
name = "b"
event = "vitals"
severity = "high"
when = [{ field = "hart_rate", op = ">", value = 120 }, { field = "spo2", op = "~", value = 1 }]
extra = 1

[[rule]]
name = "c"
event = "smoke"
severity = "low"
when = [{ field = "state", op = ">", value = "alarm" }, { field = "state", op = "==", value = "fire" }]
"#;
        let p = RuleSet::parse(Path::new("rules.toml"), src).unwrap_err();
        let got: Vec<_> = p.iter().map(|p| (p.line, p.key.clone())).collect();
        assert_eq!(
            got,
            [
                (5, "rule[0].severity".to_owned()),
                (11, "rule[1].when[0].field".to_owned()),
                (11, "rule[1].when[1].op".to_owned()),
                (12, "rule[1].extra".to_owned()),
                (18, "rule[2].when[0].op".to_owned()),
                (18, "rule[2].when[1].value".to_owned()),
            ]
        );
    }
}
