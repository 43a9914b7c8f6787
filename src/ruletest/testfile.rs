//! The rule test-file format (`config/tests/*.toml`, described in `config/tests/README.md`):
//! residents, devices and named cases, each a timeline of steps — messages sent, alerts
//! acknowledged or resolved, suppressions put on — with the alerts expected at each step.
//!
//! Read as strictly as the configuration (an unknown key is an error) and with every problem
//! located by line, because a typo in a test must fail the test run rather than silently test
//! less. Everything that can be checked without the engine is checked here: times run
//! forward, devices and residents exist, rule names exist in the rules file, and every message
//! passes the canonical decoder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use toml_edit::Value;

use crate::config::reader::{Ctx, Problem, Section, scalar_text, to_json};
use crate::domain::alert::{Severity, Status};
use crate::domain::care::{DEFAULT_TIME_ZONE, Resident};
use crate::domain::duration;
use crate::registry::{Registration, parse_tz};
use crate::ruletest::world::NewSuppression;

/// Topic root messages are checked under: the canonical default (the world delivers them to
/// the device, whatever root the engine's configuration names).
const TOPIC_ROOT: &str = "anxin/v1";

/// The outcome a `resolve` step uses when it names none.
pub const DEFAULT_OUTCOME: &str = "resolved_by_phone";

/// The reason a `suppress` step uses when it gives none.
pub const DEFAULT_REASON: &str = "rule test";

/// A parsed test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The rules file it tests (`rules`, relative to the test file; default `../rules.toml`).
    pub rules: PathBuf,
    /// The rule names that rules file declares.
    pub rule_names: Vec<String>,
    /// When cases start unless they say otherwise.
    pub start: DateTime<Utc>,
    /// Rules whose alerts `alerts_exactly` and `no_alerts` leave out in every case.
    pub ignore_rules: BTreeSet<String>,
    /// Residents put into every case's world.
    pub residents: Vec<ResidentSpec>,
    /// Devices registered in every case's world.
    pub devices: Vec<DeviceSpec>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// A resident as a test file declares it.
#[derive(Debug, Clone)]
pub struct ResidentSpec {
    /// Line of its `[[resident]]`.
    pub line: usize,
    /// The resident.
    pub resident: Resident,
}

/// A device as a test file declares it.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Line of its `[[device]]`.
    pub line: usize,
    /// The registration the world gets.
    pub registration: Registration,
    /// How often it reports at least once (`report_interval`), the basis of offline
    /// supervision.
    pub report_interval: Option<Duration>,
}

/// One named case: a fresh world, then its steps in time order.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name, unique in the file.
    pub name: String,
    /// Line of its `[[case]]`.
    pub line: usize,
    /// When its world starts: relative times count from here.
    pub start: DateTime<Utc>,
    /// The file's `ignore_rules` plus the case's own.
    pub ignore_rules: BTreeSet<String>,
    /// Rules it exercises without naming them in an expectation (a correlation rule that
    /// raises another rule's alert).
    pub covers: Vec<String>,
    /// The steps, in time order.
    pub steps: Vec<Step>,
}

/// One step: move the clock to `at`, do the action, check the expectations.
#[derive(Debug, Clone)]
pub struct Step {
    /// Line of its `[[case.step]]`.
    pub line: usize,
    /// When it happens.
    pub at: DateTime<Utc>,
    /// `at` as written (the previous step's when omitted), for messages.
    pub at_text: String,
    /// What happens at that time, if anything.
    pub action: Option<Action>,
    /// What must then be true.
    pub expectations: Vec<Expectation>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Devices send these messages, in order.
    Send(Vec<Message>),
    /// An operator acknowledges the newest unresolved alert matching.
    Ack(AlertSpec),
    /// An operator resolves the newest unresolved alert matching, with `outcome`.
    Resolve {
        /// Which alert.
        alert: AlertSpec,
        /// The outcome (`resolved_by_phone` unless given).
        outcome: String,
    },
    /// An operator puts a suppression on.
    Suppress(NewSuppression),
}

/// One message a device sends.
#[derive(Debug, Clone)]
pub struct Message {
    /// Line it is written on.
    pub line: usize,
    /// The sending device.
    pub device: String,
    /// The canonical JSON the world gets (with `ts` and `seq` added unless given).
    pub json: String,
}

/// An alert pattern: only the fields given are compared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertSpec {
    /// Line it is written on.
    pub line: usize,
    /// Rule that opened it.
    pub rule: Option<String>,
    /// Device it is about.
    pub device: Option<String>,
    /// Resident it is about.
    pub resident: Option<String>,
    /// Alert kind.
    pub kind: Option<String>,
    /// Status.
    pub status: Option<Status>,
    /// Severity.
    pub severity: Option<Severity>,
    /// Escalation level.
    pub level: Option<i64>,
    /// Matches counted on it.
    pub count: Option<i64>,
    /// Resolution outcome.
    pub outcome: Option<String>,
    /// Timeline actions it must contain.
    pub timeline_has: Vec<String>,
    /// When it must have opened, with the text as written.
    pub opened_at: Option<(DateTime<Utc>, String)>,
}

/// What must be true after a step.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// An alert like this exists (each `alerts_include` entry a different alert).
    Include(AlertSpec),
    /// No alert like this exists.
    Exclude(AlertSpec),
    /// The alerts are exactly these, leaving out ignored rules (`alerts_exactly`, or
    /// `no_alerts = true` for none).
    Exactly {
        /// Line of the key.
        line: usize,
        /// The expected alerts.
        alerts: Vec<AlertSpec>,
    },
}

impl Expectation {
    /// The line it is written on.
    pub fn line(&self) -> usize {
        match self {
            Expectation::Include(s) | Expectation::Exclude(s) => s.line,
            Expectation::Exactly { line, .. } => *line,
        }
    }
}

/// Reads and parses a test file.
pub fn read(path: &Path) -> Result<TestFile, Vec<Problem>> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse(path, &src),
        Err(e) => Err(vec![Problem {
            file: path.to_owned(),
            line: 0,
            key: "-".into(),
            message: format!("cannot read the test file: {e}"),
        }]),
    }
}

/// Parses a test file read from `path`, reporting every problem with its line.
pub fn parse(path: &Path, src: &str) -> Result<TestFile, Vec<Problem>> {
    let doc = match toml_edit::Document::parse(src) {
        Ok(d) => d,
        Err(e) => {
            let ctx = Ctx::new(path, src);
            ctx.problem(
                ctx.line_of(e.span()),
                "-",
                format!("not valid TOML: {}", e.message().trim()),
            );
            return Err(ctx.into_problems());
        }
    };
    let ctx = Ctx::new(path, src);
    let mut root = Section::new(&ctx, doc.as_table(), String::new(), 1);
    let file = read_file(&mut root, path);
    root.finish();
    let problems = ctx.into_problems();
    match file {
        Some(f) if problems.is_empty() => Ok(f),
        _ => Err(problems),
    }
}

fn read_file(root: &mut Section<'_, '_>, path: &Path) -> Option<TestFile> {
    let dir = path.parent().unwrap_or(Path::new(""));
    // Test files live in config/tests/, beside config/rules.toml.
    let (rules, rules_line) = match root.string("rules") {
        Some((p, line)) => (dir.join(p), line),
        None => (dir.join("..").join("rules.toml"), 1),
    };
    let rule_names = match rule_names(&rules) {
        Ok(n) => n,
        Err(m) => {
            root.problem(rules_line, "rules", m);
            Vec::new()
        }
    };
    let start = match time_at(root, "start", None) {
        Some((t, _, _)) => Some(t),
        None => {
            if !root.ctx().has_problem_at("start") {
                root.problem(
                    1,
                    "start",
                    "missing: when the cases start, e.g. start = \"2026-03-02T08:00:00+08:00\"",
                );
            }
            None
        }
    };
    let names = Names {
        rules: rule_names.iter().cloned().collect(),
        rules_checked: !root.ctx().has_problem_at("rules"),
        residents: BTreeSet::new(),
        devices: BTreeSet::new(),
    };
    let ignore_rules = rule_list(root, "ignore_rules", &names);

    let mut residents: Vec<ResidentSpec> = Vec::new();
    for (i, s) in root.tables("resident").into_iter().enumerate() {
        if let Some(r) = read_resident(s) {
            if residents.iter().any(|o| o.resident.id == r.resident.id) {
                root.ctx().problem(
                    r.line,
                    format!("resident[{i}].id"),
                    format!("resident {:?} is declared twice", r.resident.id),
                );
            }
            residents.push(r);
        }
    }
    let names = Names {
        residents: residents.iter().map(|r| r.resident.id.clone()).collect(),
        ..names
    };
    let mut devices: Vec<DeviceSpec> = Vec::new();
    for (i, s) in root.tables("device").into_iter().enumerate() {
        if let Some(d) = read_device(s, &names) {
            if devices
                .iter()
                .any(|o| o.registration.id == d.registration.id)
            {
                root.ctx().problem(
                    d.line,
                    format!("device[{i}].id"),
                    format!("device {:?} is declared twice", d.registration.id),
                );
            }
            devices.push(d);
        }
    }
    let names = Names {
        devices: devices.iter().map(|d| d.registration.id.clone()).collect(),
        ..names
    };

    let mut cases: Vec<Case> = Vec::new();
    let case_sections = root.tables("case");
    if case_sections.is_empty() && !root.ctx().has_problem_at("case") {
        root.problem(
            1,
            "case",
            "no [[case]]: a test file needs at least one case",
        );
    }
    for (i, s) in case_sections.into_iter().enumerate() {
        let Some(start) = start else { continue };
        if let Some(c) = read_case(s, start, &ignore_rules, &names) {
            if cases.iter().any(|o| o.name == c.name) {
                root.ctx().problem(
                    c.line,
                    format!("case[{i}].name"),
                    format!("two cases are named {:?}", c.name),
                );
            }
            cases.push(c);
        }
    }
    Some(TestFile {
        path: path.to_owned(),
        rules,
        rule_names,
        start: start?,
        ignore_rules,
        residents,
        devices,
        cases,
    })
}

/// What names a test file may refer to.
struct Names {
    rules: BTreeSet<String>,
    /// False when the rules file could not be read (its problem is reported once).
    rules_checked: bool,
    residents: BTreeSet<String>,
    devices: BTreeSet<String>,
}

impl Names {
    fn check_rule(&self, s: &Section<'_, '_>, line: usize, key: &str, rule: &str) -> bool {
        if !self.rules_checked || self.rules.contains(rule) {
            return true;
        }
        s.problem(
            line,
            key,
            format!(
                "no rule {rule:?} in the rules file (it has: {})",
                self.rules.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
        false
    }

    fn check_device(&self, s: &Section<'_, '_>, line: usize, key: &str, id: &str) -> bool {
        if self.devices.contains(id) {
            return true;
        }
        s.problem(
            line,
            key,
            format!("no device {id:?} is declared in this file ([[device]])"),
        );
        false
    }

    fn check_resident(&self, s: &Section<'_, '_>, line: usize, key: &str, id: &str) -> bool {
        if self.residents.contains(id) {
            return true;
        }
        s.problem(
            line,
            key,
            format!("no resident {id:?} is declared in this file ([[resident]])"),
        );
        false
    }
}

/// The rule names a rules file declares, without compiling it: a test file only needs to know
/// which names exist, and the engine reports the rules' own problems.
pub fn rule_names(path: &Path) -> Result<Vec<String>, String> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the rules file {}: {e}", path.display()))?;
    let doc = toml_edit::Document::parse(src.as_str()).map_err(|e| {
        format!(
            "the rules file {} is not valid TOML ({}); `anxin check-config` shows where",
            path.display(),
            e.message().trim()
        )
    })?;
    Ok(doc
        .get("rule")
        .and_then(|r| r.as_array_of_tables())
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

fn rule_list(s: &mut Section<'_, '_>, key: &'static str, names: &Names) -> BTreeSet<String> {
    let Some((list, line)) = s.text_list(key) else {
        return BTreeSet::new();
    };
    list.into_iter()
        .filter(|r| names.check_rule(s, line, key, r))
        .collect()
}

fn read_resident(mut s: Section<'_, '_>) -> Option<ResidentSpec> {
    let line = s.line();
    let id = match s.string("id") {
        Some((id, l)) if !crate::event::valid_device_id(&id) => {
            s.problem(l, "id", format!("{id:?} breaks [A-Za-z0-9_.:-]{{1,64}}"));
            None
        }
        Some((id, _)) => Some(id),
        None => {
            if !s.ctx().has_problem_at(&s.key_path("id")) {
                s.problem_here("a resident needs an id");
            }
            None
        }
    };
    let name = s.string("name").map(|(n, _)| n);
    let region = s.string("region").map(|(r, _)| r);
    let time_zone = match s.string("time_zone") {
        Some((tz, l)) => {
            if tz.parse::<chrono_tz::Tz>().is_err() {
                s.problem(
                    l,
                    "time_zone",
                    format!("{tz:?} is not an IANA time zone name (e.g. \"Asia/Shanghai\")"),
                );
            }
            tz
        }
        None => DEFAULT_TIME_ZONE.to_owned(),
    };
    let labels = labels(&mut s);
    let mut thresholds = BTreeMap::new();
    for e in s.entries("thresholds").unwrap_or_default() {
        match e.item.as_value().and_then(|v| match v {
            Value::Float(f) => Some(*f.value()),
            Value::Integer(i) => Some(*i.value() as f64),
            _ => None,
        }) {
            Some(n) if n.is_finite() => {
                thresholds.insert(e.key, n);
            }
            _ => s.ctx().problem(e.line, e.path, "a threshold is a number"),
        }
    }
    s.finish();
    let id = id?;
    Some(ResidentSpec {
        line,
        resident: Resident {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            region: region.unwrap_or_else(|| "test".into()),
            time_zone,
            labels,
            thresholds,
        },
    })
}

/// `labels = { key = value }`; numbers and booleans are taken as their text, as rules compare
/// label text (`lives_alone = true` is `"true"`).
fn labels(s: &mut Section<'_, '_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in s.entries("labels").unwrap_or_default() {
        match e.item.as_value().and_then(scalar_text) {
            Some(v) => {
                out.insert(e.key, v);
            }
            None => s
                .ctx()
                .problem(e.line, e.path, "a label is a string, number or boolean"),
        }
    }
    out
}

fn read_device(mut s: Section<'_, '_>, names: &Names) -> Option<DeviceSpec> {
    let line = s.line();
    let id = s.string("id").map(|(id, _)| id);
    if id.is_none() && !s.ctx().has_problem_at(&s.key_path("id")) {
        s.problem_here("a device needs an id");
    }
    let device_type = s.string("type").map(|(t, _)| t);
    let room = s.string("room").map(|(r, _)| r);
    let family = s.string("family").map(|(f, _)| f);
    let tz = match s.string("tz") {
        Some((tz, l)) if parse_tz(&tz).is_none() => {
            s.problem(l, "tz", format!("{tz:?} is not a clock offset like +08:00"));
            None
        }
        other => other.map(|(tz, _)| tz),
    };
    let resident_id = match s.string("resident") {
        Some((r, l)) => names.check_resident(&s, l, "resident", &r).then_some(r),
        None => None,
    };
    let report_interval = match s.string("report_interval") {
        Some((text, l)) => match duration::parse(&text) {
            Ok(d) => Some(d),
            Err(m) => {
                s.problem(l, "report_interval", m);
                None
            }
        },
        None => None,
    };
    let labels = labels(&mut s);
    let ctx = s.ctx();
    let path = path_of(&s);
    s.finish();
    let id = id?;
    // Every field spelled out, so a new registration field is a decision here.
    let registration = Registration {
        id,
        family,
        device_type,
        room,
        labels,
        resident_id,
        tz,
        report_interval: report_interval.map(duration::format),
    };
    for p in registration.problems(0) {
        ctx.problem(line, format!("{path}.{}", p.field), p.message);
    }
    // Kept even when refused, so steps naming it do not report it missing as well.
    Some(DeviceSpec {
        line,
        registration,
        report_interval,
    })
}

fn read_case(
    mut s: Section<'_, '_>,
    file_start: DateTime<Utc>,
    file_ignore: &BTreeSet<String>,
    names: &Names,
) -> Option<Case> {
    let line = s.line();
    let name = s.string("name").map(|(n, _)| n);
    if name.is_none() && !s.ctx().has_problem_at(&s.key_path("name")) {
        s.problem_here("a case needs a name");
    }
    // A case may start at its own time, absolute or relative to the file's start.
    let start = time_at(&mut s, "start", Some(file_start)).map_or(file_start, |(t, _, _)| t);
    let mut ignore_rules = file_ignore.clone();
    ignore_rules.extend(rule_list(&mut s, "ignore_rules", names));
    let covers = rule_list(&mut s, "covers", names).into_iter().collect();
    let step_sections = s.tables("step");
    if step_sections.is_empty() && !s.ctx().has_problem_at(&s.key_path("step")) {
        s.problem_here("a case needs at least one [[case.step]]");
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut seq: HashMap<String, i64> = HashMap::new();
    let mut prev = (start, "+0s".to_owned());
    for st in step_sections {
        if let Some(step) = read_step(st, start, &prev, names, &mut seq) {
            prev = (step.at, step.at_text.clone());
            steps.push(step);
        }
    }
    if !steps.is_empty()
        && !steps.iter().any(|st| !st.expectations.is_empty())
        && !has_problem_under(&s)
    {
        s.problem_here("the case expects nothing: add alerts_include, alerts_exactly, alerts_exclude or no_alerts to a step");
    }
    s.finish();
    Some(Case {
        name: name?,
        line,
        start,
        ignore_rules,
        covers,
        steps,
    })
}

fn read_step(
    mut s: Section<'_, '_>,
    case_start: DateTime<Utc>,
    prev: &(DateTime<Utc>, String),
    names: &Names,
    seq: &mut HashMap<String, i64>,
) -> Option<Step> {
    let line = s.line();
    let (at, at_text) = match time_at(&mut s, "at", Some(case_start)) {
        Some((t, text, l)) => {
            if t < prev.0 {
                s.problem(
                    l,
                    "at",
                    format!(
                        "{text} is before the step above ({}): steps run in time order",
                        prev.1
                    ),
                );
                return None;
            }
            (t, text)
        }
        None if s.ctx().has_problem_at(&s.key_path("at")) => return None,
        None => prev.clone(),
    };
    let mut actions = Vec::new();
    let sends = s.table_or_tables("send");
    if !sends.is_empty() {
        let msgs: Vec<Message> = sends
            .into_iter()
            .filter_map(|m| read_message(m, at, names, seq))
            .collect();
        actions.push(("send", Action::Send(msgs)));
    }
    if let Some(a) = s.table("ack")
        && let Some(spec) = read_spec(a, case_start, names, SpecUse::Target)
    {
        actions.push(("ack", Action::Ack(spec)));
    }
    if let Some(r) = s.table("resolve")
        && let Some(mut alert) = read_spec(r, case_start, names, SpecUse::Resolve)
    {
        let outcome = alert
            .outcome
            .take()
            .unwrap_or_else(|| DEFAULT_OUTCOME.to_owned());
        actions.push(("resolve", Action::Resolve { alert, outcome }));
    }

    if let Some(sup) = s.table("suppress")
        && let Some(n) = read_suppression(sup, at, case_start, names)
    {
        actions.push(("suppress", Action::Suppress(n)));
    }
    if actions.len() > 1 {
        let which: Vec<&str> = actions.iter().map(|(k, _)| *k).collect();
        s.problem_here(format!(
            "one action per step, this one has {}: split it into steps at the same time",
            which.join(" and ")
        ));
    }
    let mut expectations = Vec::new();
    for t in s.tables("alerts_include") {
        if let Some(spec) = read_spec(t, case_start, names, SpecUse::Include) {
            expectations.push(Expectation::Include(spec));
        }
    }
    for t in s.tables("alerts_exclude") {
        if let Some(spec) = read_spec(t, case_start, names, SpecUse::Exclude) {
            expectations.push(Expectation::Exclude(spec));
        }
    }
    let exactly_line = s
        .peek("alerts_exactly")
        .map(|_| line_of_key(&s, "alerts_exactly"));
    let exactly: Vec<AlertSpec> = s
        .tables("alerts_exactly")
        .into_iter()
        .filter_map(|t| read_spec(t, case_start, names, SpecUse::Include))
        .collect();
    if let Some(l) = exactly_line {
        expectations.push(Expectation::Exactly {
            line: l,
            alerts: exactly,
        });
    }
    let no_alerts_line = s.peek("no_alerts").map(|_| line_of_key(&s, "no_alerts"));
    match (s.bool("no_alerts"), no_alerts_line) {
        (Some(true), Some(l)) => {
            if exactly_line.is_some() {
                s.problem(l, "no_alerts", "give alerts_exactly or no_alerts, not both");
            }
            expectations.push(Expectation::Exactly {
                line: l,
                alerts: Vec::new(),
            });
        }
        (Some(false), Some(l)) => s.problem(
            l,
            "no_alerts",
            "only `no_alerts = true` means something; leave the key out otherwise",
        ),
        _ => {}
    }
    if actions.is_empty() && expectations.is_empty() && !has_problem_under(&s) {
        s.problem_here("a step needs an action (send, ack, resolve, suppress) or an expectation (alerts_include, alerts_exactly, alerts_exclude, no_alerts)");
    }
    s.finish();
    Some(Step {
        line,
        at,
        at_text,
        action: actions.into_iter().next().map(|(_, a)| a),
        expectations,
    })
}

fn has_problem_under(s: &Section<'_, '_>) -> bool {
    s.ctx().has_problem_at(&path_of(s))
}

/// The dotted path of a section itself, for problems about a key read after it is finished.
fn path_of(s: &Section<'_, '_>) -> String {
    s.key_path("").trim_end_matches('.').to_owned()
}

fn line_of_key(s: &Section<'_, '_>, key: &str) -> usize {
    // The key's own line; `peek` does not mark it read, the typed getter that follows does.
    s.peek(key)
        .and_then(|i| i.span())
        .map(|sp| s.ctx().line_of(Some(sp)))
        .unwrap_or_else(|| s.line())
}

fn read_message(
    mut s: Section<'_, '_>,
    at: DateTime<Utc>,
    names: &Names,
    seq: &mut HashMap<String, i64>,
) -> Option<Message> {
    let line = s.line();
    let ctx = s.ctx();
    let path = path_of(&s);
    let device = match s.string("device") {
        Some((d, l)) => names.check_device(&s, l, "device", &d).then_some(d),
        None => {
            s.problem_here("a message needs the device that sends it: device = \"…\"");
            None
        }
    };
    let event = match s.value("event") {
        Some((v @ Value::InlineTable(_), l)) => Some((to_json(v), l)),
        Some((v, l)) => {
            s.problem(
                l,
                "event",
                format!(
                    "expected an inline table like {{ type = \"sos\" }}, found {}",
                    v.type_name()
                ),
            );
            None
        }
        None => {
            s.problem_here("a message needs its event: event = { type = \"…\", … }");
            None
        }
    };
    s.finish();
    let (device, (mut event, event_line)) = (device?, event?);
    let obj = event.as_object_mut()?;
    if !obj.get("type").is_some_and(|t| t.is_string()) {
        ctx.problem(
            event_line,
            format!("{path}.event.type"),
            "an event needs its type, e.g. type = \"sos\"",
        );
        return None;
    }
    // A well-behaved device: its own time and a sequence number, so two messages are never
    // taken for one (a test that studies duplicates gives both itself).
    let n = seq.entry(device.clone()).or_insert(0);
    *n += 1;
    if !obj.contains_key("ts") {
        obj.insert(
            "ts".into(),
            at.to_rfc3339_opts(SecondsFormat::Secs, true).into(),
        );
    }
    if !obj.contains_key("seq") {
        obj.insert("seq".into(), (*n).into());
    }
    let json = event.to_string();
    let topic = format!("{TOPIC_ROOT}/devices/{device}/events");
    let decoded = crate::protocol::canonical::decode(TOPIC_ROOT, &topic, json.as_bytes(), at);
    let refused: Vec<String> = decoded
        .items
        .iter()
        .filter_map(|i| i.as_ref().err())
        .map(|r| r.detail.clone())
        .collect();
    if !refused.is_empty() {
        ctx.problem(
            event_line,
            format!("{path}.event"),
            format!("the decoder refuses this event: {}", refused.join("; ")),
        );
        return None;
    }
    Some(Message { line, device, json })
}

/// What an alert pattern is for, which decides the keys it takes.
#[derive(Clone, Copy, PartialEq)]
enum SpecUse {
    /// `alerts_include`, `alerts_exactly`: every key, `rule` required.
    Include,
    /// `alerts_exclude`: every key, at least one of rule, device, resident or kind.
    Exclude,
    /// `ack`: rule and device or resident.
    Target,
    /// `resolve`: as `ack`, plus the `outcome` to resolve with.
    Resolve,
}

fn read_spec(
    mut s: Section<'_, '_>,
    case_start: DateTime<Utc>,
    names: &Names,
    usage: SpecUse,
) -> Option<AlertSpec> {
    let mut spec = AlertSpec {
        line: s.line(),
        ..AlertSpec::default()
    };
    let mut ok = true;
    if let Some((r, l)) = s.string("rule") {
        ok &= names.check_rule(&s, l, "rule", &r);
        spec.rule = Some(r);
    }
    if let Some((d, l)) = s.string("device") {
        ok &= names.check_device(&s, l, "device", &d);
        spec.device = Some(d);
    }
    if let Some((r, l)) = s.string("resident") {
        ok &= names.check_resident(&s, l, "resident", &r);
        spec.resident = Some(r);
    }
    if usage == SpecUse::Resolve {
        // The outcome to resolve with, handed back to the caller in this field.
        spec.outcome = s.string("outcome").map(|(o, _)| o);
    }
    if matches!(usage, SpecUse::Include | SpecUse::Exclude) {
        spec.kind = s.string("kind").map(|(k, _)| k);
        if let Some((st, l)) = s.string("status") {
            spec.status = Status::parse(&st);
            if spec.status.is_none() {
                s.problem(
                    l,
                    "status",
                    format!("{st:?} is not one of open, acknowledged, dispatched, resolved"),
                );
                ok = false;
            }
        }
        if let Some((sev, l)) = s.string("severity") {
            spec.severity = Severity::parse(&sev);
            if spec.severity.is_none() {
                s.problem(
                    l,
                    "severity",
                    format!("{sev:?} is not one of critical, high, medium, low"),
                );
                ok = false;
            }
        }
        spec.level = s.int("level", 0..=1000);
        spec.count = s.int("count", 1..=i64::MAX);
        spec.outcome = s.string("outcome").map(|(o, _)| o);
        spec.timeline_has = s
            .text_list("timeline_has")
            .map(|(l, _)| l)
            .unwrap_or_default();
        spec.opened_at =
            time_at(&mut s, "opened_at", Some(case_start)).map(|(t, text, _)| (t, text));
    }
    match usage {
        SpecUse::Include if spec.rule.is_none() && !s.ctx().has_problem_at(&s.key_path("rule")) => {
            s.problem_here("an expected alert names its rule: rule = \"…\"");
            ok = false;
        }
        SpecUse::Exclude
            if spec.rule.is_none()
                && spec.device.is_none()
                && spec.resident.is_none()
                && spec.kind.is_none() =>
        {
            s.problem_here("say which alerts must not exist: rule, device, resident or kind");
            ok = false;
        }
        SpecUse::Target | SpecUse::Resolve
            if spec.rule.is_none() || (spec.device.is_none() && spec.resident.is_none()) =>
        {
            s.problem_here(
                "name the alert by its rule and its device or resident: { rule = \"…\", device = \"…\" }",
            );
            ok = false;
        }
        _ => {}
    }
    s.finish();
    ok.then_some(spec)
}

fn read_suppression(
    mut s: Section<'_, '_>,
    at: DateTime<Utc>,
    case_start: DateTime<Utc>,
    names: &Names,
) -> Option<NewSuppression> {
    let mut known = true;
    let resident_id = s.string("resident").map(|(r, l)| {
        known &= names.check_resident(&s, l, "resident", &r);
        r
    });
    let device_id = s.string("device").map(|(d, l)| {
        known &= names.check_device(&s, l, "device", &d);
        d
    });
    let kinds = s.text_list("kinds").map(|(k, _)| k);
    let reason = s
        .string("reason")
        .map_or_else(|| DEFAULT_REASON.to_owned(), |(r, _)| r);
    let until = time_at(&mut s, "until", Some(case_start)).map(|(t, _, _)| t);
    let for_ = match s.string("for") {
        Some((text, l)) => match duration::parse(&text) {
            Ok(d) => Some(at + d),
            Err(m) => {
                s.problem(l, "for", m);
                return None;
            }
        },
        None => None,
    };
    if resident_id.is_some() == device_id.is_some() {
        s.problem_here("a suppression covers one resident or one device: give resident or device");
    }
    let until = match (until, for_) {
        (Some(u), None) | (None, Some(u)) => u,
        _ => {
            s.problem_here(
                "say when it ends: until = \"+24h\" (from the case start) or for = \"24h\" (from this step)",
            );
            return None;
        }
    };
    s.finish();
    if !known || resident_id.is_some() == device_id.is_some() {
        return None;
    }
    Some(NewSuppression {
        resident_id,
        device_id,
        kinds,
        reason,
        until,
    })
}

/// Reads a time: a string (`"+5m"`, RFC 3339) or a TOML offset date-time. `base` is what
/// relative times count from; `None` allows only absolute times.
fn time_at(
    s: &mut Section<'_, '_>,
    key: &'static str,
    base: Option<DateTime<Utc>>,
) -> Option<(DateTime<Utc>, String, usize)> {
    let (v, line) = s.value(key)?;
    let text = match v {
        Value::String(t) => t.value().clone(),
        Value::Datetime(d) => d.value().to_string(),
        other => {
            s.problem(
                line,
                key,
                format!(
                    "expected a time (\"+5m\" or \"2026-03-02T08:00:00+08:00\"), found {}",
                    other.type_name()
                ),
            );
            return None;
        }
    };
    let parsed = match base {
        Some(b) => parse_time(&text, b),
        None if text.trim_start().starts_with('+') => Err(format!(
            "{text:?} is relative; here the time must be absolute, e.g. \"2026-03-02T08:00:00+08:00\""
        )),
        None => parse_time(&text, DateTime::<Utc>::MIN_UTC),
    };
    match parsed {
        Ok(t) => Some((t, text, line)),
        Err(m) => {
            s.problem(line, key, m);
            None
        }
    }
}

/// Parses a step time: `+5m`, `+1h30m`, `+0s` after `base`, or an RFC 3339 time with its
/// offset (`2026-03-02T20:00:00+08:00`).
pub fn parse_time(text: &str, base: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Some(rel) = t.strip_prefix('+') {
        return parse_offset(rel).map(|d| base + d);
    }
    if parse_offset(t).is_ok() {
        return Err(format!(
            "{text:?} is not an offset: write \"+{t}\" for that long after the case start"
        ));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{text:?}: times only move forward; write an offset like \"+5m\""
        ));
    }
    match DateTime::parse_from_rfc3339(t) {
        Ok(d) => Ok(d.with_timezone(&Utc)),
        Err(_) if t.contains('T') && !t.ends_with('Z') && !has_offset(t) => Err(format!(
            "{text:?} has no UTC offset; write it, e.g. \"2026-03-02T20:00:00+08:00\""
        )),
        Err(e) => Err(format!(
            "{text:?} is neither an offset like \"+5m\" nor an RFC 3339 time like \"2026-03-02T20:00:00+08:00\" ({e})"
        )),
    }
}

fn has_offset(t: &str) -> bool {
    t.rsplit_once('T')
        .is_some_and(|(_, time)| time.contains('+') || time.contains('-'))
}

/// Parses `5m`, `1h30m`, `2d`, `0s`: whole numbers each followed by `d`, `h`, `m` or `s`.
pub fn parse_offset(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("\"+{text}\" is not an offset: write e.g. \"+90s\", \"+5m\", \"+1h30m\" or \"+1d\"")
    };
    let mut total = Duration::zero();
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let per = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: i64 = digits.parse().map_err(|_| bad())?;
        if n > 400 * 86_400 {
            return Err(format!("\"+{text}\" is more than a year"));
        }
        total += Duration::seconds(n * per);
        digits.clear();
        any = true;
    }
    if !any || !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// Writes an offset the way [`parse_offset`] reads it: `+0s`, `+59s`, `+5m`, `+1h30m`.
pub fn format_offset(d: Duration) -> String {
    let mut s = d.num_seconds();
    if s < 0 {
        return format!("-{}", &format_offset(-d)[1..]);
    }
    if s == 0 {
        return "+0s".into();
    }
    let mut out = String::from("+");
    for (unit, per) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if s >= per {
            out.push_str(&format!("{}{unit}", s / per));
            s %= per;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `rules.toml` with rules sos and fall and `src` as `tests/t.toml`; parses it.
    fn parse_in_dir(src: &str) -> (tempfile::TempDir, Result<TestFile, Vec<Problem>>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.toml"),
            "[[rule]]\nname = \"sos\"\nevent = \"sos\"\n[[rule]]\nname = \"fall\"\nevent = \"fall\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        let path = dir.path().join("tests").join("t.toml");
        std::fs::write(&path, src).unwrap();
        let parsed = read(&path);
        (dir, parsed)
    }

    fn line(src: &str, needle: &str) -> usize {
        src.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_key() {
        let src = r#"start = "2026-03-02T08:00:00+08:00"
colour = "blue"

[[resident]]
id = "r1"
time_zone = "Mars/Olympus"

[[device]]
id = "p1"
resident = "r2"

[[device]]
id = "w1"
report_interval = "often"

[[case]]
name = "many mistakes"

[[case.step]]
at = "5m"
no_alerts = true

[[case.step]]
at = "+1m"
send = { device = "w1", event = { type = "vitals", heart_rate = "fast" } }

[[case.step]]
at = "+2m"
send = { device = "p9", event = { type = "sos" } }
ack = { rule = "sos", device = "p1" }

[[case.step]]
at = "+3m"
alerts_include = [{ rule = "soss", device = "p1", status = "opened" }]
expect = "typo"

[[case.step]]
at = "+4m"
suppress = { resident = "r1", kinds = ["water"] }

[[case.step]]
at = "+5m"
alerts_exclude = [{ status = "open" }]
"#;
        let (_dir, parsed) = parse_in_dir(src);
        let problems = parsed.unwrap_err();
        let got: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (line(src, "Mars"), "resident[0].time_zone"),
                (line(src, "r2"), "device[0].resident"),
                (line(src, "often"), "device[1].report_interval"),
                (line(src, "\"5m\""), "case[0].step[0].at"),
                (line(src, "fast"), "case[0].step[1].send.event"),
                (line(src, "p9"), "case[0].step[2].send.device"),
                (line(src, "at = \"+2m\"") - 1, "case[0].step[2]"),
                (line(src, "soss"), "case[0].step[3].alerts_include[0].rule"),
                (
                    line(src, "soss"),
                    "case[0].step[3].alerts_include[0].status"
                ),
                (line(src, "typo"), "case[0].step[3].expect"),
                (line(src, "kinds"), "case[0].step[4].suppress"),
                (
                    line(src, "status = \"open\""),
                    "case[0].step[5].alerts_exclude[0]"
                ),
                (line(src, "colour"), "colour"),
            ],
            "{problems:#?}"
        );
        let text = |key: &str| {
            problems
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.message.clone())
                .unwrap()
        };
        assert!(text("case[0].step[1].send.event").contains("the decoder refuses this event"));
        assert!(text("case[0].step[2]").contains("one action per step, this one has send and ack"));
        assert!(text("case[0].step[3].alerts_include[0].rule").contains("no rule \"soss\""));
        assert_eq!(text("case[0].step[3].expect"), "unknown key");
        assert!(text("case[0].step[4].suppress").contains("say when it ends"));
        assert!(text("case[0].step[0].at").contains("not an offset"));
    }

    #[test]
    fn a_file_without_start_or_cases_and_a_missing_rules_file_are_problems() {
        let (_dir, parsed) = parse_in_dir("rules = \"nowhere.toml\"\n");
        let problems = parsed.unwrap_err();
        let got: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            [(1, "rules"), (1, "start"), (1, "case")],
            "{problems:#?}"
        );
        assert!(problems[0].message.contains("cannot read the rules file"));
        let (_dir, parsed) = parse_in_dir("start = \"+5m\"\n[[case]]\nname = \"x\"\n");
        let problems = parsed.unwrap_err();
        assert!(
            problems[0].message.contains("must be absolute"),
            "{problems:#?}"
        );
        let (_dir, parsed) = parse_in_dir("start = [\n");
        assert!(parsed.unwrap_err()[0].message.contains("not valid TOML"));
    }

    #[test]
    fn messages_carry_their_time_and_a_sequence_per_device() {
        let src = r#"start = "2026-03-02T08:00:00+08:00"
[[device]]
id = "p1"
[[device]]
id = "p2"
[[case]]
name = "stamps"
start = "+1d"
[[case.step]]
at = "+5m"
send = [{ device = "p1", event = { type = "sos" } }, { device = "p2", event = { type = "sos" } }, { device = "p1", event = { type = "sos", seq = 7, ts = "2026-03-03T00:00:00Z" } }]
[[case.step]]
at = "2026-03-03T08:06:00+08:00"
resolve = { rule = "sos", device = "p1" }
no_alerts = true
"#;
        let (_dir, parsed) = parse_in_dir(src);
        let f = parsed.unwrap();
        let case = &f.cases[0];
        assert_eq!(case.start.to_rfc3339(), "2026-03-03T00:00:00+00:00");
        let Some(Action::Send(m)) = &case.steps[0].action else {
            panic!("a send")
        };
        let json: Vec<serde_json::Value> = m
            .iter()
            .map(|m| serde_json::from_str(&m.json).unwrap())
            .collect();
        assert_eq!(json[0]["ts"], "2026-03-03T00:05:00Z");
        assert_eq!(
            (json[0]["seq"].as_i64(), json[1]["seq"].as_i64()),
            (Some(1), Some(1))
        );
        assert_eq!(
            (json[2]["seq"].as_i64(), json[2]["ts"].as_str()),
            (Some(7), Some("2026-03-03T00:00:00Z"))
        );
        let step = &case.steps[1];
        assert_eq!(step.at - case.start, Duration::minutes(6));
        let Some(Action::Resolve { outcome, .. }) = &step.action else {
            panic!("a resolve")
        };
        assert_eq!(outcome, DEFAULT_OUTCOME);
    }

    /// The shipped tests are the engine's specification: they must parse, and every rule of
    /// the shipped rules file must be exercised by at least one case.
    #[test]
    fn the_shipped_tests_parse_and_cover_every_shipped_rule() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let files = crate::ruletest::runner::test_files(&[root.join("config/tests")]).unwrap();
        let mut covered = BTreeSet::new();
        let mut cases = 0;
        for path in &files {
            let f = read(path).unwrap_or_else(|p| {
                panic!(
                    "{}",
                    p.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
            assert_eq!(f.rules, path.parent().unwrap().join("../rules.toml"));
            for c in &f.cases {
                cases += 1;
                covered.extend(c.covers.iter().cloned());
                for st in &c.steps {
                    for e in &st.expectations {
                        let specs = match e {
                            Expectation::Include(s) | Expectation::Exclude(s) => vec![s],
                            Expectation::Exactly { alerts, .. } => alerts.iter().collect(),
                        };
                        covered.extend(specs.iter().filter_map(|s| s.rule.clone()));
                    }
                }
            }
        }
        let all = rule_names(&root.join("config/rules.toml")).unwrap();
        let missing: Vec<&String> = all.iter().filter(|r| !covered.contains(*r)).collect();
        assert!(missing.is_empty(), "rules without a test: {missing:?}");
        assert!(cases >= all.len(), "{cases} cases for {} rules", all.len());
    }

    #[test]
    fn offsets_read_and_write_alike() {
        assert_eq!(parse_offset("5m"), Ok(Duration::minutes(5)));
        assert_eq!(parse_offset("1h30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_offset("0s"), Ok(Duration::zero()));
        assert_eq!(
            parse_offset("1d2h3m4s").map(format_offset),
            Ok("+1d2h3m4s".into())
        );
        assert!(parse_offset("5").unwrap_err().contains("not an offset"));
        assert!(parse_offset("m").is_err());
        assert!(parse_offset("5x").is_err());
        assert_eq!(format_offset(Duration::seconds(59)), "+59s");
        assert_eq!(format_offset(Duration::hours(12)), "+12h");
    }

    #[test]
    fn times_are_relative_or_absolute_with_an_offset() {
        let base = DateTime::parse_from_rfc3339("2026-03-02T08:00:00+08:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time("+12h", base), Ok(base + Duration::hours(12)));
        assert_eq!(
            parse_time("2026-03-02T20:00:00+08:00", base),
            Ok(base + Duration::hours(12))
        );
        assert!(
            parse_time("2026-03-02T20:00:00", base)
                .unwrap_err()
                .contains("no UTC offset")
        );
        assert!(parse_time("-5m", base).unwrap_err().contains("forward"));
        assert!(parse_time("tomorrow", base).is_err());
    }
}
