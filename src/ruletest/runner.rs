//! Runs rule test files (`anxin test-rules`): each case in a fresh [`World`] on a virtual
//! clock, each step moving the clock, doing its action and comparing the world's alerts with
//! what the step expects. A failure names the test file's line, what was expected and what
//! the world holds, so the person who changed a rule sees at once which promise broke.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::reader::Problem;
use crate::ruletest::testfile::{
    self, Action, AlertSpec, Case, Expectation, TestFile, format_offset,
};
use crate::ruletest::world::{AlertView, World};

/// What a world factory is asked for: one per case.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldSpec {
    /// The rules file under test.
    pub rules: PathBuf,
    /// The virtual time the world starts at (the case's start).
    pub start: DateTime<Utc>,
}

/// One broken expectation (or a world error), located in the test file.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The test file.
    pub file: PathBuf,
    /// 1-based line of the failing expectation, action or case.
    pub line: usize,
    /// The case's name.
    pub case: String,
    /// The step's time as written, when a step failed.
    pub at: Option<String>,
    /// What was expected and what happened.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: case {:?}: ",
            self.file.display(),
            self.line,
            self.case
        )?;
        if let Some(at) = &self.at {
            write!(f, "at {at}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// How one case went.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// Its name.
    pub name: String,
    /// Line of its `[[case]]`.
    pub line: usize,
    /// Empty when it passed; a case stops at its first failing step.
    pub failures: Vec<Failure>,
}

impl CaseResult {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// How one test file went.
#[derive(Debug, Clone, PartialEq)]
pub struct FileReport {
    /// The test file.
    pub file: PathBuf,
    /// Why it could not be read; when not empty no case ran, and the file counts as one
    /// failed case.
    pub problems: Vec<Problem>,
    /// Its cases, in file order.
    pub cases: Vec<CaseResult>,
}

impl FileReport {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    /// Cases that failed, plus one when the file itself could not be read.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count() + usize::from(!self.problems.is_empty())
    }
}

impl fmt::Display for FileReport {
    /// Every problem and failure, one per paragraph, then the file's own tally.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        for c in &self.cases {
            for x in &c.failures {
                writeln!(f, "{x}")?;
            }
        }
        if self.problems.is_empty() {
            write!(
                f,
                "{}: {} passed, {} failed",
                self.file.display(),
                self.passed(),
                self.failed()
            )
        } else {
            write!(
                f,
                "{}: not run ({} problem(s) in the file)",
                self.file.display(),
                self.problems.len()
            )
        }
    }
}

/// The tally over all files: `N passed, M failed`, counting cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed, with one per unreadable file.
    pub failed: usize,
}

impl Summary {
    /// Adds a file's cases.
    pub fn add(&mut self, r: &FileReport) {
        self.passed += r.passed();
        self.failed += r.failed();
    }

    /// Whether everything passed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// The test files to run: each argument that is a file, the `*.toml` files under each that is
/// a directory (sorted, recursively), and with no argument those under `config/tests/`. A
/// directory's `README.md` and other non-TOML files are left alone.
pub fn test_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let default = [PathBuf::from("config/tests")];
    let args = if args.is_empty() { &default[..] } else { args };
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let before = out.len();
            collect_toml(a, &mut out).map_err(|e| format!("cannot list {}: {e}", a.display()))?;
            if out.len() == before {
                return Err(format!("no *.toml test files under {}", a.display()));
            }
        } else if a.exists() {
            out.push(a.clone());
        } else {
            return Err(format!("{}: no such test file or directory", a.display()));
        }
    }
    Ok(out)
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_toml(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Runs every case of the test file at `path`, each in a fresh world from `make_world`.
/// A file that cannot be read reports its problems and runs nothing.
pub async fn run_file<F, Fut, W>(path: &Path, mut make_world: F) -> FileReport
where
    F: FnMut(WorldSpec) -> Fut,
    Fut: Future<Output = anyhow::Result<W>>,
    W: World,
{
    let file = match testfile::read(path) {
        Ok(f) => f,
        Err(problems) => {
            return FileReport {
                file: path.to_owned(),
                problems,
                cases: Vec::new(),
            };
        }
    };
    let mut cases = Vec::new();
    for case in &file.cases {
        let spec = WorldSpec {
            rules: file.rules.clone(),
            start: case.start,
        };
        let failures = match make_world(spec).await {
            Ok(mut world) => run_case(&file, case, &mut world).await.err(),
            Err(e) => Some(vec![Failure {
                file: file.path.clone(),
                line: case.line,
                case: case.name.clone(),
                at: None,
                message: format!("cannot start the world: {e:#}"),
            }]),
        };
        cases.push(CaseResult {
            name: case.name.clone(),
            line: case.line,
            failures: failures.unwrap_or_default(),
        });
    }
    FileReport {
        file: file.path.clone(),
        problems: Vec::new(),
        cases,
    }
}

/// Runs one case in `world` (fresh, its clock at the case's start): puts the file's
/// residents and devices in, then each step in order. Stops at the first step that fails and
/// returns that step's failures.
pub async fn run_case<W: World>(
    file: &TestFile,
    case: &Case,
    world: &mut W,
) -> Result<(), Vec<Failure>> {
    let fail = |line: usize, at: Option<&str>, message: String| {
        vec![Failure {
            file: file.path.clone(),
            line,
            case: case.name.clone(),
            at: at.map(str::to_owned),
            message,
        }]
    };
    for r in &file.residents {
        world.put_resident(r.resident.clone()).await.map_err(|e| {
            fail(
                r.line,
                None,
                format!("the world refused resident {}: {e:#}", r.resident.id),
            )
        })?;
    }
    for d in &file.devices {
        world
            .put_device(d.registration.clone())
            .await
            .map_err(|e| {
                fail(
                    d.line,
                    None,
                    format!("the world refused device {}: {e:#}", d.registration.id),
                )
            })?;
    }
    let show = Show { start: case.start };
    for step in &case.steps {
        let at = Some(step.at_text.as_str());
        let now = world.now();
        if step.at > now {
            world
                .advance_to(step.at)
                .await
                .map_err(|e| fail(step.line, at, format!("moving the clock forward: {e:#}")))?;
        } else if step.at < now {
            return Err(fail(
                step.line,
                at,
                format!(
                    "the world's clock is already at {} (its own deadlines moved it?)",
                    show.time(now)
                ),
            ));
        }
        match &step.action {
            None => {}
            Some(Action::Send(messages)) => {
                for m in messages {
                    world.send(&m.device, &m.json).await.map_err(|e| {
                        fail(
                            m.line,
                            at,
                            format!("{} could not send {}: {e:#}", m.device, m.json),
                        )
                    })?;
                }
            }
            Some(Action::Ack(target)) => {
                let id = find_target(world, target, "acknowledge", &show)
                    .await
                    .map_err(|m| fail(target.line, at, m))?;
                world
                    .ack(id)
                    .await
                    .map_err(|e| fail(target.line, at, format!("acknowledging: {e:#}")))?;
            }
            Some(Action::Resolve { alert, outcome }) => {
                let id = find_target(world, alert, "resolve", &show)
                    .await
                    .map_err(|m| fail(alert.line, at, m))?;
                world
                    .resolve(id, outcome)
                    .await
                    .map_err(|e| fail(alert.line, at, format!("resolving as {outcome}: {e:#}")))?;
            }
            Some(Action::Suppress(s)) => {
                world
                    .suppress(s.clone())
                    .await
                    .map_err(|e| fail(step.line, at, format!("suppressing: {e:#}")))?;
            }
        }
        if step.expectations.is_empty() {
            continue;
        }
        let alerts = world
            .alerts()
            .await
            .map_err(|e| fail(step.line, at, format!("reading the alerts: {e:#}")))?;
        let failures: Vec<Failure> = check_step(&step.expectations, &alerts, case, &show)
            .into_iter()
            .flat_map(|(line, m)| fail(line, at, m))
            .collect();
        if !failures.is_empty() {
            return Err(failures);
        }
    }
    Ok(())
}

/// The newest unresolved alert `target` names, or why there is none.
async fn find_target<W: World>(
    world: &mut W,
    target: &AlertSpec,
    verb: &str,
    show: &Show,
) -> Result<i64, String> {
    let alerts = world
        .alerts()
        .await
        .map_err(|e| format!("reading the alerts: {e:#}"))?;
    alerts
        .iter()
        .rev()
        .find(|a| a.status != "resolved" && same_alert(target, a))
        .map(|a| a.id)
        .ok_or_else(|| {
            format!(
                "nothing to {verb}: no unresolved {}{}",
                show.subject(target),
                show.all_alerts(&alerts, target.resident.is_some())
            )
        })
}

/// Compares the alerts after a step with its expectations; each failure with its line.
fn check_step(
    expectations: &[Expectation],
    alerts: &[AlertView],
    case: &Case,
    show: &Show,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Every `alerts_include` entry of a step needs an alert of its own.
    let include: Vec<&AlertSpec> = expectations
        .iter()
        .filter_map(|e| match e {
            Expectation::Include(s) => Some(s),
            _ => None,
        })
        .collect();
    let all: Vec<&AlertView> = alerts.iter().collect();
    let owner = matching(&include, &all, show);
    for (i, spec) in include.iter().enumerate() {
        if !owner.contains(&Some(i)) {
            out.push((spec.line, missing(spec, &all, show)));
        }
    }
    for e in expectations {
        match e {
            Expectation::Include(_) => {}
            Expectation::Exclude(spec) => {
                let found: Vec<&AlertView> =
                    alerts.iter().filter(|a| show.matches(spec, a)).collect();
                if !found.is_empty() {
                    out.push((
                        spec.line,
                        format!(
                            "expected no {}, found:{}",
                            show.subject(spec),
                            show.list(&found, spec.resident.is_some(), None)
                        ),
                    ));
                }
            }
            Expectation::Exactly {
                line,
                alerts: specs,
            } => {
                let considered: Vec<&AlertView> = alerts
                    .iter()
                    .filter(|a| !case.ignore_rules.contains(&a.rule))
                    .collect();
                let specs: Vec<&AlertSpec> = specs.iter().collect();
                let owner = matching(&specs, &considered, show);
                let all_found = (0..specs.len()).all(|i| owner.contains(&Some(i)));
                if all_found && owner.iter().all(Option::is_some) {
                    continue;
                }
                out.push((*line, exact_diff(&specs, &considered, &owner, case, show)));
            }
        }
    }
    out
}

/// A maximum matching of specs to distinct alerts (Kuhn's augmenting paths; both lists are
/// small): for each alert, the index of the spec it satisfies.
fn matching(specs: &[&AlertSpec], alerts: &[&AlertView], show: &Show) -> Vec<Option<usize>> {
    let ok: Vec<Vec<bool>> = specs
        .iter()
        .map(|s| alerts.iter().map(|a| show.matches(s, a)).collect())
        .collect();
    let mut owner = vec![None; alerts.len()];
    for i in 0..specs.len() {
        let mut seen = vec![false; alerts.len()];
        augment(i, &ok, &mut seen, &mut owner);
    }
    owner
}

fn augment(i: usize, ok: &[Vec<bool>], seen: &mut [bool], owner: &mut [Option<usize>]) -> bool {
    for j in 0..owner.len() {
        if ok[i][j] && !seen[j] {
            seen[j] = true;
            if owner[j].is_none_or(|k| augment(k, ok, seen, owner)) {
                owner[j] = Some(i);
                return true;
            }
        }
    }
    false
}

/// Why an `alerts_include` entry found no alert: the alerts of the same rule and device, each
/// with how it differs, or all alerts when none is of that rule and device.
fn missing(spec: &AlertSpec, alerts: &[&AlertView], show: &Show) -> String {
    let with_resident = spec.resident.is_some();
    let candidates: Vec<&AlertView> = alerts
        .iter()
        .copied()
        .filter(|a| same_alert(spec, a))
        .collect();
    if candidates.is_empty() {
        return format!(
            "expected {}, found no {}{}",
            show.spec(spec),
            show.subject(spec),
            show.all_alerts(alerts.iter().copied(), with_resident)
        );
    }
    format!(
        "expected {}, found:{}",
        show.spec(spec),
        show.list(&candidates, with_resident, Some(spec))
    )
}

/// The `alerts_exactly` / `no_alerts` diff: `-` an expected alert not found, `+` an alert not
/// expected, the rest as found.
fn exact_diff(
    specs: &[&AlertSpec],
    alerts: &[&AlertView],
    owner: &[Option<usize>],
    case: &Case,
    show: &Show,
) -> String {
    let with_resident = specs.iter().any(|s| s.resident.is_some());
    let ignoring = if case.ignore_rules.is_empty() {
        String::new()
    } else {
        format!(
            " (leaving out {})",
            case.ignore_rules
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut out = if specs.is_empty() {
        format!("expected no alerts{ignoring}, found:")
    } else {
        format!(
            "expected exactly these alerts{ignoring} (- expected, not found; + found, not expected):"
        )
    };
    for (j, a) in alerts.iter().enumerate() {
        let mark = if owner[j].is_some() { ' ' } else { '+' };
        out.push_str(&format!(
            "\n  {mark} {}",
            show.alert(a, with_resident, None)
        ));
    }
    for (i, s) in specs.iter().enumerate() {
        if !owner.contains(&Some(i)) {
            out.push_str(&format!("\n  - {}", show.spec(s)));
        }
    }
    out
}

/// Whether `a` is the alert `spec` names (rule, device, resident, kind), whatever its state.
fn same_alert(spec: &AlertSpec, a: &AlertView) -> bool {
    spec.rule.as_ref().is_none_or(|r| *r == a.rule)
        && spec.device.as_ref().is_none_or(|d| *d == a.device_id)
        && spec
            .resident
            .as_ref()
            .is_none_or(|r| a.resident_id.as_ref() == Some(r))
        && spec.kind.as_ref().is_none_or(|k| *k == a.kind)
}

/// How alerts, patterns and times are written in messages: times relative to the case start.
struct Show {
    start: DateTime<Utc>,
}

impl Show {
    fn time(&self, t: DateTime<Utc>) -> String {
        format_offset(t - self.start)
    }

    /// Whether `a` is the alert `spec` names and has every property it gives.
    fn matches(&self, spec: &AlertSpec, a: &AlertView) -> bool {
        same_alert(spec, a) && self.differences(spec, a).is_empty()
    }

    /// What `a` has that `spec` does not want, one phrase each.
    fn differences(&self, spec: &AlertSpec, a: &AlertView) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |name: &str, found: String, wanted: String| {
            if found != wanted {
                out.push(format!("{name} is {found}, not {wanted}"));
            }
        };
        if let Some(s) = spec.status {
            differ("status", a.status.clone(), s.as_str().into());
        }
        if let Some(s) = spec.severity {
            differ("severity", a.severity.clone(), s.as_str().into());
        }
        if let Some(l) = spec.level {
            differ("level", a.escalation_level.to_string(), l.to_string());
        }
        if let Some(c) = spec.count {
            differ("count", a.count.to_string(), c.to_string());
        }
        if let Some(o) = &spec.outcome {
            differ(
                "outcome",
                a.outcome.clone().unwrap_or_else(|| "none".into()),
                o.clone(),
            );
        }
        if let Some((t, text)) = &spec.opened_at
            && a.opened_at != *t
        {
            out.push(format!(
                "it opened at {}, not {text}",
                self.time(a.opened_at)
            ));
        }
        for entry in &spec.timeline_has {
            if !a.timeline.contains(entry) {
                out.push(format!("its timeline has no {entry}"));
            }
        }
        out
    }

    /// `rule sos for p1`, `alert of kind vitals for resident r1`: what a pattern is about.
    fn subject(&self, spec: &AlertSpec) -> String {
        let mut s = match &spec.rule {
            Some(r) => format!("alert of rule {r}"),
            None => "alert".to_owned(),
        };
        if let Some(k) = &spec.kind {
            s.push_str(&format!(" of kind {k}"));
        }
        if let Some(d) = &spec.device {
            s.push_str(&format!(" for {d}"));
        }
        if let Some(r) = &spec.resident {
            s.push_str(&format!(" for resident {r}"));
        }
        let rest = self.properties(spec);
        if !rest.is_empty() {
            s.push_str(&format!(" ({rest})"));
        }
        s
    }

    /// A pattern written like an alert: `sos p1 open critical level 1`.
    fn spec(&self, spec: &AlertSpec) -> String {
        let mut parts = vec![spec.rule.clone().unwrap_or_else(|| "any rule".into())];
        if let Some(d) = &spec.device {
            parts.push(d.clone());
        }
        if let Some(r) = &spec.resident {
            parts.push(format!("(resident {r})"));
        }
        if let Some(k) = &spec.kind {
            parts.push(format!("kind {k}"));
        }
        let rest = self.properties(spec);
        if !rest.is_empty() {
            parts.push(rest);
        }
        parts.join(" ")
    }

    fn properties(&self, spec: &AlertSpec) -> String {
        let mut parts = Vec::new();
        if let Some(s) = spec.status {
            parts.push(s.as_str().to_owned());
        }
        if let Some(s) = spec.severity {
            parts.push(s.as_str().to_owned());
        }
        if let Some(l) = spec.level {
            parts.push(format!("level {l}"));
        }
        if let Some(c) = spec.count {
            parts.push(format!("count {c}"));
        }
        if let Some(o) = &spec.outcome {
            parts.push(format!("outcome {o}"));
        }
        if let Some((_, text)) = &spec.opened_at {
            parts.push(format!("opened {text}"));
        }
        if !spec.timeline_has.is_empty() {
            parts.push(format!("timeline has {}", spec.timeline_has.join(", ")));
        }
        parts.join(" ")
    }

    /// An alert on one line: `heart_rate_high p1 open high level 0 count 1, opened +5m`; with
    /// `compared`, its timeline when the pattern asks about it, and how it differs.
    fn alert(&self, a: &AlertView, with_resident: bool, compared: Option<&AlertSpec>) -> String {
        let mut s = format!("{} {}", a.rule, a.device_id);
        if with_resident {
            s.push_str(&format!(
                " (resident {})",
                a.resident_id.as_deref().unwrap_or("none")
            ));
        }
        s.push_str(&format!(
            " {} {} level {} count {}",
            a.status, a.severity, a.escalation_level, a.count
        ));
        if let Some(o) = &a.outcome {
            s.push_str(&format!(" outcome {o}"));
        }
        s.push_str(&format!(", opened {}", self.time(a.opened_at)));
        if let Some(spec) = compared {
            if !spec.timeline_has.is_empty() {
                s.push_str(&format!(", timeline: {}", a.timeline.join(", ")));
            }
            let d = self.differences(spec, a);
            s.push_str(&if d.is_empty() {
                " (it matches, but another expectation of this step took it)".to_owned()
            } else {
                format!(" — {}", d.join("; "))
            });
        }
        s
    }

    fn list(
        &self,
        alerts: &[&AlertView],
        with_resident: bool,
        compared: Option<&AlertSpec>,
    ) -> String {
        alerts
            .iter()
            .map(|a| format!("\n    {}", self.alert(a, with_resident, compared)))
            .collect()
    }

    /// `; the alerts are:` and each, or `; there are no alerts`.
    fn all_alerts<'a>(
        &self,
        alerts: impl IntoIterator<Item = &'a AlertView>,
        with_resident: bool,
    ) -> String {
        let all: Vec<&AlertView> = alerts.into_iter().collect();
        if all.is_empty() {
            "; there are no alerts".into()
        } else {
            format!("; the alerts are:{}", self.list(&all, with_resident, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use chrono::Duration;

    use super::*;
    use crate::domain::care::Resident;
    use crate::registry::Registration;
    use crate::ruletest::world::NewSuppression;

    /// A world with one rule: every `sos` opens a critical alert (or counts on the open one)
    /// that climbs to level 1 after 60 s and 2 after 180 s of virtual time unless
    /// acknowledged.
    struct FakeWorld {
        now: DateTime<Utc>,
        devices: HashMap<String, Registration>,
        alerts: Vec<AlertView>,
        suppressions: Vec<NewSuppression>,
    }

    impl FakeWorld {
        fn new(start: DateTime<Utc>) -> Self {
            FakeWorld {
                now: start,
                devices: HashMap::new(),
                alerts: Vec::new(),
                suppressions: Vec::new(),
            }
        }
    }

    impl World for FakeWorld {
        fn now(&self) -> DateTime<Utc> {
            self.now
        }
        async fn put_resident(&mut self, _: Resident) -> anyhow::Result<()> {
            Ok(())
        }
        async fn put_device(&mut self, reg: Registration) -> anyhow::Result<()> {
            self.devices.insert(reg.id.clone(), reg);
            Ok(())
        }
        async fn suppress(&mut self, s: NewSuppression) -> anyhow::Result<i64> {
            self.suppressions.push(s);
            Ok(self.suppressions.len() as i64)
        }
        async fn advance_to(&mut self, t: DateTime<Utc>) -> anyhow::Result<()> {
            anyhow::ensure!(t >= self.now, "time runs forward");
            self.now = t;
            for a in self.alerts.iter_mut().filter(|a| a.status == "open") {
                for (level, secs) in [(1, 60), (2, 180)] {
                    if t >= a.opened_at + Duration::seconds(secs) && a.escalation_level < level {
                        a.escalation_level = level;
                        a.timeline.push("escalated".into());
                    }
                }
            }
            Ok(())
        }
        async fn send(&mut self, device: &str, json: &str) -> anyhow::Result<()> {
            let reg = self
                .devices
                .get(device)
                .ok_or_else(|| anyhow::anyhow!("unknown device {device}"))?;
            let v: serde_json::Value = serde_json::from_str(json)?;
            if v["type"] != "sos" {
                return Ok(());
            }
            if let Some(a) = self
                .alerts
                .iter_mut()
                .find(|a| a.device_id == device && a.status != "resolved")
            {
                a.count += 1;
                a.timeline.push("event".into());
                return Ok(());
            }
            self.alerts.push(AlertView {
                id: self.alerts.len() as i64 + 1,
                rule: "sos".into(),
                kind: "sos".into(),
                device_id: device.into(),
                resident_id: reg.resident_id.clone(),
                severity: "critical".into(),
                status: "open".into(),
                escalation_level: 0,
                count: 1,
                outcome: None,
                opened_at: self.now,
                timeline: vec!["opened".into()],
            });
            Ok(())
        }
        async fn ack(&mut self, id: i64) -> anyhow::Result<()> {
            let a = self
                .alerts
                .iter_mut()
                .find(|a| a.id == id)
                .ok_or_else(|| anyhow::anyhow!("no alert {id}"))?;
            anyhow::ensure!(a.status == "open", "alert {id} is {}", a.status);
            a.status = "acknowledged".into();
            a.timeline.push("acknowledged".into());
            Ok(())
        }
        async fn resolve(&mut self, id: i64, outcome: &str) -> anyhow::Result<()> {
            let a = self
                .alerts
                .iter_mut()
                .find(|a| a.id == id)
                .ok_or_else(|| anyhow::anyhow!("no alert {id}"))?;
            a.status = "resolved".into();
            a.outcome = Some(outcome.into());
            a.timeline.push("resolved".into());
            Ok(())
        }
        async fn alerts(&mut self) -> anyhow::Result<Vec<AlertView>> {
            Ok(self.alerts.clone())
        }
    }

    const RULES: &str = "[[rule]]\nname = \"sos\"\nevent = \"sos\"\nseverity = \"critical\"\n\n[[rule]]\nname = \"fall\"\nevent = \"fall\"\nseverity = \"critical\"\n";

    const HEAD: &str = r#"start = "2026-03-02T08:00:00+08:00"

[[resident]]
id = "r1"
labels = { lives_alone = true }

[[device]]
id = "p1"
type = "pendant"
resident = "r1"
"#;

    /// A directory with the rules file at `rules.toml` and the test file at `tests/t.toml`
    /// (so the default `../rules.toml` finds it).
    fn setup(body: &str) -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        let path = dir.path().join("tests").join("t.toml");
        let src = format!("{HEAD}{body}");
        std::fs::write(&path, &src).unwrap();
        (dir, path, src)
    }

    /// The 1-based line of the first line containing `needle`.
    fn line(src: &str, needle: &str) -> usize {
        src.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the test file"))
            + 1
    }

    async fn run(path: &Path) -> FileReport {
        run_file(path, |spec| async move { Ok(FakeWorld::new(spec.start)) }).await
    }

    const CLIMBS: &str = r#"
[[case]]
name = "sos climbs"

[[case.step]]
at = "+0s"
send = { device = "p1", event = { type = "sos" } }
alerts_exactly = [{ rule = "sos", device = "p1", status = "open", severity = "critical", level = 0, count = 1 }]

[[case.step]]
at = "+59s"
alerts_include = [{ rule = "sos", device = "p1", level = 0 }]

[[case.step]]
at = "+60s"
alerts_include = [{ rule = "sos", device = "p1", status = "open", severity = "critical", level = LEVEL }]

[[case.step]]
at = "+180s"
alerts_include = [{ rule = "sos", resident = "r1", level = 2, opened_at = "+0s", timeline_has = ["escalated"] }]
"#;

    #[tokio::test]
    async fn cases_that_hold_pass_each_in_a_fresh_world() {
        let body = format!(
            "{}{}",
            CLIMBS.replace("LEVEL", "1"),
            r#"
[[case]]
name = "acknowledged in time it stays at level 0; nothing leaks from the case above"

[[case.step]]
no_alerts = true

[[case.step]]
at = "+10s"
send = [{ device = "p1", event = { type = "sos" } }, { device = "p1", event = { type = "sos" } }]

[[case.step]]
at = "+30s"
ack = { rule = "sos", device = "p1" }
alerts_include = [{ rule = "sos", device = "p1", status = "acknowledged", count = 2 }]

[[case.step]]
at = "+5m"
alerts_exactly = [{ rule = "sos", device = "p1", status = "acknowledged", level = 0 }]
alerts_exclude = [{ rule = "fall" }, { rule = "sos", status = "open" }]

[[case.step]]
at = "+6m"
resolve = { rule = "sos", device = "p1", outcome = "false_alarm" }

[[case.step]]
at = "+7m"
send = { device = "p1", event = { type = "sos" } }
alerts_include = [
    { rule = "sos", device = "p1", status = "resolved", outcome = "false_alarm" },
    { rule = "sos", device = "p1", status = "open", count = 1, opened_at = "+7m" },
]
"#
        );
        let (_dir, path, _) = setup(&body);
        let specs = Arc::new(Mutex::new(Vec::new()));
        let seen = specs.clone();
        let report = run_file(&path, move |spec: WorldSpec| {
            seen.lock().unwrap().push(spec.clone());
            async move { Ok(FakeWorld::new(spec.start)) }
        })
        .await;
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!((report.passed(), report.failed()), (2, 0), "{report}");
        let specs = specs.lock().unwrap();
        assert_eq!(specs.len(), 2, "one world per case");
        assert!(specs[0].rules.ends_with("tests/../rules.toml"));
        assert_eq!(specs[0].start.to_rfc3339(), "2026-03-02T00:00:00+00:00");
        let mut total = Summary::default();
        total.add(&report);
        assert_eq!(total.to_string(), "2 passed, 0 failed");
        assert!(total.ok());
    }

    #[tokio::test]
    async fn a_wrong_expectation_fails_at_its_line_with_what_was_expected_and_found() {
        let (_dir, path, src) = setup(&CLIMBS.replace("LEVEL", "2"));
        let report = run(&path).await;
        assert_eq!((report.passed(), report.failed()), (0, 1), "{report}");
        let failures = &report.cases[0].failures;
        assert_eq!(failures.len(), 1);
        assert_eq!(
            failures[0].to_string(),
            format!(
                "{}:{}: case \"sos climbs\": at +60s: expected sos p1 open critical level 2, found:\n    sos p1 open critical level 1 count 1, opened +0s — level is 1, not 2",
                path.display(),
                line(&src, "level = 2 }]")
            )
        );
        let mut total = Summary::default();
        total.add(&report);
        assert_eq!(total.to_string(), "0 passed, 1 failed");
        assert!(!total.ok());
    }

    #[tokio::test]
    async fn unwanted_and_missing_alerts_are_shown_as_a_diff() {
        let body = r#"
[[case]]
name = "no sos expected"

[[case.step]]
at = "+1m"
send = { device = "p1", event = { type = "sos" } }
alerts_exclude = [{ rule = "sos", device = "p1" }]
alerts_include = [{ rule = "fall", device = "p1" }]
alerts_exactly = [{ rule = "fall", device = "p1", severity = "critical" }]
"#;
        let (_dir, path, src) = setup(body);
        let report = run(&path).await;
        let got: Vec<String> = report.cases[0]
            .failures
            .iter()
            .map(|f| f.to_string())
            .collect();
        let at = |needle: &str| {
            format!(
                "{}:{}: case \"no sos expected\": at +1m: ",
                path.display(),
                line(&src, needle)
            )
        };
        assert_eq!(
            got,
            [
                format!(
                    "{}expected fall p1, found no alert of rule fall for p1; the alerts are:\n    sos p1 open critical level 0 count 1, opened +1m",
                    at("alerts_include")
                ),
                format!(
                    "{}expected no alert of rule sos for p1, found:\n    sos p1 open critical level 0 count 1, opened +1m",
                    at("alerts_exclude")
                ),
                format!(
                    "{}expected exactly these alerts (- expected, not found; + found, not expected):\n  + sos p1 open critical level 0 count 1, opened +1m\n  - fall p1 critical",
                    at("alerts_exactly")
                ),
            ]
        );
    }

    #[tokio::test]
    async fn ignored_rules_are_left_out_of_exact_comparisons() {
        let body = r#"
[[case]]
name = "the sos is not this file's business"
ignore_rules = ["sos"]

[[case.step]]
send = { device = "p1", event = { type = "sos" } }
no_alerts = true
"#;
        let (_dir, path, _) = setup(body);
        let report = run(&path).await;
        assert_eq!((report.passed(), report.failed()), (1, 0), "{report}");
    }

    #[tokio::test]
    async fn acting_on_an_alert_that_is_not_there_fails_at_the_action() {
        let body = r#"
[[case]]
name = "ack without alarm"

[[case.step]]
at = "+30s"
ack = { rule = "sos", device = "p1" }
no_alerts = true
"#;
        let (_dir, path, src) = setup(body);
        let report = run(&path).await;
        let f = &report.cases[0].failures[0];
        assert_eq!(f.line, line(&src, "ack ="));
        assert_eq!(
            f.message,
            "nothing to acknowledge: no unresolved alert of rule sos for p1; there are no alerts"
        );
    }

    #[tokio::test]
    async fn a_world_that_cannot_start_fails_every_case_at_its_line() {
        let (_dir, path, src) = setup(&CLIMBS.replace("LEVEL", "1"));
        let report = run_file(&path, |_| async {
            Err::<FakeWorld, _>(anyhow::anyhow!("the rule harness is not wired yet"))
        })
        .await;
        assert_eq!(report.failed(), 1);
        let f = &report.cases[0].failures[0];
        assert_eq!(f.line, line(&src, "[[case]]"));
        assert_eq!(
            f.to_string(),
            format!(
                "{}:{}: case \"sos climbs\": cannot start the world: the rule harness is not wired yet",
                path.display(),
                f.line
            )
        );
    }

    #[tokio::test]
    async fn a_malformed_file_runs_nothing_and_counts_as_one_failure() {
        let body = r#"
[[case]]
name = "broken"

[[case.step]]
at = "+5m"
send = { device = "p9", event = { type = "sos" } }

[[case.step]]
at = "+4m"
no_alerts = true
"#;
        let (_dir, path, src) = setup(body);
        let report = run(&path).await;
        assert!(report.cases.is_empty());
        assert_eq!(report.failed(), 1);
        let got: Vec<(usize, String)> = report
            .problems
            .iter()
            .map(|p| (p.line, p.key.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (line(&src, "p9"), "case[0].step[0].send.device".into()),
                (line(&src, "+4m"), "case[0].step[1].at".into()),
            ]
        );
        assert!(
            report.problems[1]
                .message
                .contains("before the step above (+5m)")
        );
        assert!(
            report
                .to_string()
                .contains("not run (2 problem(s) in the file)")
        );
    }

    /// The fake world implements exactly what sos.toml specifies (open, count, escalate at
    /// 60 s and 180 s unless acknowledged, a new alert after resolution), so the shipped file
    /// must pass against it: a check that the file is consistent with itself.
    #[tokio::test]
    async fn the_shipped_sos_tests_pass_against_a_world_that_behaves_as_they_say() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tests/sos.toml");
        let report = run(&path).await;
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(report.failed(), 0, "{report}");
        assert!(report.passed() >= 9, "{report}");
    }

    #[test]
    fn test_files_are_found_in_directories_sorted_and_only_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for f in ["b.toml", "a.toml", "README.md", "sub/c.toml"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let found = test_files(&[dir.path().to_owned()]).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.toml", "b.toml", "sub/c.toml"]);
        let missing = dir.path().join("nope.toml");
        assert!(
            test_files(&[missing])
                .unwrap_err()
                .contains("no such test file")
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(
            test_files(&[empty.path().to_owned()])
                .unwrap_err()
                .contains("no *.toml")
        );
    }
}
