//! The rules file's reader: `config/rules.toml` into a [`RuleSet`], every problem with file
//! and line (CONTRACT.md "Rules file"). The rule types and their evaluation are in
//! [`crate::rules`].

use std::path::Path;

use chrono::Duration;

use super::reader::{Ctx, Problem, Section};
use crate::domain::alert::Severity;
use crate::event::{EventType, FieldKind};
use crate::rules::{
    After, Condition, Grace, Literal, Op, Per, Rule, RuleSet, Selector, Trigger, TypeSet, Window,
};

impl RuleSet {
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
        let mut escalation = Vec::new();
        if let Some(mut e) = root.table("escalation") {
            for sev in Severity::ALL {
                if let Some(steps) = read_steps(&mut e, sev.as_str()) {
                    escalation.push((sev, steps));
                }
            }
            e.finish();
        }
        let mut rules: Vec<(Rule, usize)> = Vec::new();
        for s in root.tables("rule") {
            let line = s.line();
            if let Some(r) = read_rule(s) {
                if rules.iter().any(|(o, _)| o.name == r.name) {
                    ctx.problem(line, format!("rule {}", r.name), "duplicate rule name");
                }
                rules.push((r, line));
            }
        }
        root.finish();
        check_set(&ctx, &rules);
        let problems = ctx.into_problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut set = RuleSet {
            rules: rules.into_iter().map(|(r, _)| r).collect(),
            escalation,
        };
        // The effective steps are part of a rule's version: a changed [escalation] table
        // changes the rules it applies to.
        let steps: Vec<Vec<Duration>> = set.rules.iter().map(|r| set.steps(r).to_vec()).collect();
        for (r, steps) in set.rules.iter_mut().zip(steps) {
            r.escalate.get_or_insert(steps);
            r.compute_version();
        }
        Ok(set)
    }
}

/// The life-safety events: every one needs a critical rule that always fires, and no rule on
/// them may be made non-critical, delayed, windowed or narrowed to some residents (DESIGN.md:
/// SOS, fall, smoke, gas are critical, immediate and never suppressible).
const LIFE_SAFETY: [EventType; 4] = [
    EventType::Sos,
    EventType::Fall,
    EventType::Smoke,
    EventType::Gas,
];

/// Checks across rules: references, life safety.
fn check_set(ctx: &Ctx<'_>, rules: &[(Rule, usize)]) {
    for (r, line) in rules {
        if let Trigger::Follows { rules: names, .. } = &r.trigger {
            for n in names {
                match rules.iter().find(|(o, _)| &o.name == n) {
                    None => ctx.problem(
                        *line,
                        format!("rule {}.follows", r.name),
                        format!("no rule is named {n:?}"),
                    ),
                    Some((o, _)) if o.event().is_none() => ctx.problem(
                        *line,
                        format!("rule {}.follows", r.name),
                        format!(
                            "{n:?} is not an event rule; only an event rule's alert can be followed"
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(ev) = r.event()
            && LIFE_SAFETY.contains(&ev)
        {
            let key = format!("rule {}", r.name);
            if r.severity != Severity::Critical {
                ctx.problem(*line, &key, format!("a {ev} alarm is always critical (DESIGN.md); severity {} would let it wait", r.severity.as_str()));
            }
            if r.kind != ev.name() {
                ctx.problem(
                    *line,
                    &key,
                    format!(
                        "a {ev} alarm keeps kind {:?}: another kind could be suppressed",
                        ev.name()
                    ),
                );
            }
            if matches!(r.trigger, Trigger::Event { hold: Some(_), .. }) {
                ctx.problem(
                    *line,
                    &key,
                    format!("a {ev} alarm is immediate: `for` would delay it"),
                );
            }
            if r.active.is_some() {
                ctx.problem(
                    *line,
                    &key,
                    format!(
                        "a {ev} alarm cannot have an `active` window: it would be silent outside it"
                    ),
                );
            }
            if !r.residents.is_empty() || !r.devices.is_empty() {
                ctx.problem(*line, &key, format!("a {ev} alarm applies to everyone: selectors would silence it for the others"));
            }
        }
    }
}

fn read_steps(s: &mut Section<'_, '_>, key: &'static str) -> Option<Vec<Duration>> {
    let (list, line) = s.text_list(key)?;
    let mut out = Vec::new();
    for t in list {
        match crate::domain::duration::parse(&t) {
            Ok(d) => {
                if out.last().is_some_and(|p: &Duration| *p >= d) {
                    s.problem(
                        line,
                        key,
                        format!("steps must grow: {t:?} is not after the step before it"),
                    );
                    return None;
                }
                out.push(d);
            }
            Err(e) => {
                s.problem(line, key, e);
                return None;
            }
        }
    }
    Some(out)
}

fn read_duration(s: &mut Section<'_, '_>, key: &'static str) -> Option<(Duration, usize)> {
    let (t, line) = s.string(key)?;
    match crate::domain::duration::parse(&t) {
        Ok(d) => Some((d, line)),
        Err(e) => {
            s.problem(line, key, e);
            None
        }
    }
}

fn read_types(s: &mut Section<'_, '_>, key: &'static str) -> Option<TypeSet> {
    let (list, line) = s.text_list(key)?;
    if list.iter().any(|t| t == "any") {
        if list.len() > 1 {
            s.problem(
                line,
                key,
                "\"any\" already counts every message; list it alone",
            );
        }
        return Some(TypeSet::Any);
    }
    let mut types = Vec::new();
    for t in list {
        match EventType::parse(&t) {
            Some(ty) => types.push(ty),
            None => {
                s.problem(line, key, format!("unknown event type {t:?}"));
                return None;
            }
        }
    }
    Some(TypeSet::Types(types))
}

fn read_selector(s: &mut Section<'_, '_>, key: &'static str) -> Selector {
    let mut sel = Selector::default();
    let Some(entries) = s.entries(key) else {
        return sel;
    };
    for e in entries {
        match e
            .item
            .as_value()
            .and_then(crate::config::reader::scalar_text)
        {
            Some(v) => {
                let (v, neg) = match v.strip_prefix('!') {
                    Some(rest) => (rest.to_owned(), true),
                    None => (v, false),
                };
                sel.pairs.push((e.key, v, neg));
            }
            None => s.problem(
                e.line,
                key,
                format!("{}: a selector value is a string", e.path),
            ),
        }
    }
    sel
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
    let event_line = s.peek("event").map(|_| line);
    let event = match s.string("event") {
        Some((e, l)) => match EventType::parse(&e) {
            Some(t) => Some(t),
            None => {
                s.problem(l, "event", format!("unknown event type {e:?}"));
                None
            }
        },
        None => None,
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
    let when = read_conditions(&mut s, "when", event);
    let any_of = read_conditions(&mut s, "when_any", event);
    let clear = read_conditions(&mut s, "clear", event);
    let hold = read_duration(&mut s, "for");
    let absent_line = s.peek("absent").map(|_| line);
    let absent = read_types(&mut s, "absent");
    let follows = s.text_list("follows");
    let per = s.choice("per", &["resident", "device"]).map(|p| {
        if p == "device" {
            Per::Device
        } else {
            Per::Resident
        }
    });
    let after_text = s.string("after");
    let grace = s.string("grace");
    let raise = s.int("raise", 1..=10);
    let residents = read_selector(&mut s, "residents");
    let devices = read_selector(&mut s, "devices");
    let active = s
        .string("active")
        .and_then(|(w, l)| match Window::parse(&w) {
            Ok(w) => Some(w),
            Err(e) => {
                s.problem(l, "active", e);
                None
            }
        });
    let escalate = if s.peek("escalate").is_some() {
        read_steps(&mut s, "escalate")
    } else {
        None
    };

    let trigger = match (event, absent_line.is_some(), &follows) {
        (Some(_), true, _) | (_, true, _) if event_line.is_some() && absent_line.is_some() => {
            s.problem(
                line,
                "absent",
                "a rule is either an event rule (`event`) or an absence (`absent`), not both",
            );
            None
        }
        (_, _, Some((_, fl))) if event_line.is_some() => {
            s.problem(
                *fl,
                "follows",
                "`follows` goes with `absent` and `after`, not with `event`",
            );
            None
        }
        (Some(event), false, None) => {
            if after_text.is_some() || per.is_some() || grace.is_some() || raise.is_some() {
                s.problem(
                    line,
                    "after",
                    "`after`, `per`, `grace` and `raise` belong to absences (`absent`)",
                );
            }
            if let (false, Some(ew)) = (clear.is_empty(), when.first())
                && clear == when
                && any_of.is_empty()
            {
                let _ = ew;
                s.problem(line, "clear", "`clear` is identical to `when`: the condition would end the moment it starts, so the rule could never stay open");
            }
            Some(Trigger::Event {
                event,
                when: when.clone(),
                any_of: any_of.clone(),
                hold: hold.map(|(d, _)| d),
                clear: clear.clone(),
            })
        }
        (None, _, _) if event_line.is_some() => None, // unknown event type, reported
        (None, true, follows) => {
            for (key, present) in [
                ("when", !when.is_empty()),
                ("when_any", !any_of.is_empty()),
                ("clear", !clear.is_empty()),
                ("for", hold.is_some()),
            ] {
                if present {
                    s.problem(line, key, format!("`{key}` belongs to event rules; an absence ends with the next watched message"));
                }
            }
            let types = absent.clone();
            let after = match &after_text {
                None => {
                    s.problem(
                        line,
                        "after",
                        "an absence needs `after` (a duration, or \"report_interval\")",
                    );
                    None
                }
                Some((t, l)) if t == "report_interval" => {
                    if follows.is_some() {
                        s.problem(*l, "after", "a correlation waits a fixed time after the alert; \"report_interval\" is for device supervision");
                        None
                    } else if per != Some(Per::Device) {
                        s.problem(*l, "after", "after = \"report_interval\" needs per = \"device\": a resident's devices report at different intervals");
                        None
                    } else {
                        let g = match &grace {
                            None => Some(Grace::Share(0.1)),
                            Some((g, gl)) => match parse_grace(g) {
                                Ok(g) => Some(g),
                                Err(e) => {
                                    s.problem(*gl, "grace", e);
                                    None
                                }
                            },
                        };
                        g.map(After::ReportInterval)
                    }
                }
                Some((t, l)) => {
                    if let Some((_, gl)) = &grace {
                        s.problem(
                            *gl,
                            "grace",
                            "`grace` only applies to after = \"report_interval\"",
                        );
                    }
                    match crate::domain::duration::parse(t) {
                        Ok(d) => Some(After::Fixed(d)),
                        Err(e) => {
                            s.problem(*l, "after", e);
                            None
                        }
                    }
                }
            };
            match (types, after, follows) {
                (Some(types), Some(After::Fixed(after)), Some((rules, _))) => {
                    if per.is_some() {
                        s.problem(line, "per", "a correlation is counted for the household of the followed alert; drop `per`");
                    }
                    Some(Trigger::Follows {
                        rules: rules.clone(),
                        types,
                        after,
                        raise: raise.unwrap_or(1),
                    })
                }
                (Some(types), Some(after), None) => {
                    if raise.is_some() {
                        s.problem(line, "raise", "`raise` belongs to correlations (`follows`)");
                    }
                    Some(Trigger::Absent {
                        types,
                        after,
                        per: per.unwrap_or(Per::Resident),
                    })
                }
                _ => None,
            }
        }
        (None, false, Some((_, fl))) => {
            s.problem(
                *fl,
                "absent",
                "`follows` needs `absent` (what must not happen) and `after`",
            );
            None
        }
        (None, false, None) => {
            s.problem(
                line,
                "event",
                "missing: a rule needs `event` (an event rule) or `absent` (an absence)",
            );
            None
        }
        _ => None,
    };
    if let Some(Trigger::Follows { .. }) = &trigger {
        if active.is_some() {
            s.problem(
                line,
                "active",
                "a correlation follows its alert whenever it opens; `active` has no meaning here",
            );
        }
        if escalate.is_some() {
            s.problem(
                line,
                "escalate",
                "a correlation raises the followed alert; it has no escalation of its own",
            );
        }
    }
    s.finish();
    let trigger = trigger?;
    let name = name?;
    let kind = kind.unwrap_or_else(|| match &trigger {
        Trigger::Event { event, .. } => event.name().to_owned(),
        _ => name.clone(),
    });
    Some(Rule {
        title: title.unwrap_or_else(|| format!("{kind} alarm")),
        kind,
        name,
        severity: severity?,
        trigger,
        residents,
        devices,
        active,
        escalate,
        version: String::new(),
    })
}

fn parse_grace(g: &str) -> Result<Grace, String> {
    if let Some(p) = g.strip_suffix('%') {
        return match p.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=10_000.0).contains(&v) => Ok(Grace::Share(v / 100.0)),
            _ => Err(format!("grace {g:?} is not a percentage like \"10%\"")),
        };
    }
    crate::domain::duration::parse(g)
        .map(Grace::Fixed)
        .map_err(|e| format!("grace is a percentage (\"10%\") or a duration: {e}"))
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
        let override_key = c.string("override");
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
            let override_key = match override_key {
                Some((k, kl))
                    if k.is_empty()
                        || !k
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    c.problem(
                        kl,
                        "override",
                        format!("{k:?} names no threshold: use letters, digits, '_' and '-'"),
                    );
                    None
                }
                Some((k, kl)) if !matches!(value, Literal::Number(_)) => {
                    c.problem(kl, "override", format!("{field} is not a number: a resident threshold {k:?} cannot replace its value"));
                    None
                }
                other => other.map(|(k, _)| k),
            };
            conditions.push(Condition {
                field,
                op,
                value,
                override_key,
            });
        }
        c.finish();
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
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
                (14, "rule c".to_owned()),
            ]
        );
    }
}
