//! The alert lifecycle as data and decisions: severity, status and which step each status
//! allows. The store encodes these decisions in its conditional updates; the rule test
//! harness and the API read them from here, so the three never disagree.

/// Alert severity, most urgent first (CONTRACT.md values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Severity {
    /// Life at risk: answer now.
    Critical,
    /// Needs a call soon.
    High,
    /// Needs attention today.
    Medium,
    /// Housekeeping.
    #[default]
    Low,
}

impl Severity {
    /// Every severity, most urgent first.
    pub const ALL: [Severity; 4] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
    ];

    /// The CONTRACT.md name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    /// Parses a CONTRACT.md name.
    pub fn parse(s: &str) -> Option<Self> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Sort rank stored with each alert: 0 is most urgent.
    pub fn rank(self) -> i64 {
        self as i64
    }
}

/// The rule name and alert kind of the one alert an unregistered device gets under the
/// `quarantine` policy (CONTRACT.md, "Devices").
pub const UNREGISTERED_RULE: &str = "unregistered_device";

/// Where an alert is in its lifecycle (CONTRACT.md values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Raised, nobody has taken it yet.
    Open,
    /// An operator has taken it.
    Acknowledged,
    /// A carer has been sent.
    Dispatched,
    /// Closed with an outcome.
    Resolved,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 4] = [
        Status::Open,
        Status::Acknowledged,
        Status::Dispatched,
        Status::Resolved,
    ];

    /// The CONTRACT.md name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::Dispatched => "dispatched",
            Status::Resolved => "resolved",
        }
    }

    /// Parses a CONTRACT.md name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What an operator adds to an alert's timeline without changing its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRecord {
    /// A call to the resident, a contact or 120, and how it ended.
    Call,
    /// Free text.
    Note,
}

impl OperatorRecord {
    /// The statuses it may be added in: a call belongs to handling the alert (later calls are
    /// a service record's follow-up); a note documents the case, closed or not.
    pub fn allowed_on(self) -> &'static [Status] {
        match self {
            OperatorRecord::Call => &[Status::Open, Status::Acknowledged, Status::Dispatched],
            OperatorRecord::Note => &Status::ALL,
        }
    }

    /// Its timeline action and its name in errors (`call`, `note`).
    pub fn action(self) -> &'static str {
        match self {
            OperatorRecord::Call => "call",
            OperatorRecord::Note => "note",
        }
    }
}

/// A step an operator takes on an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorStep {
    /// Take it (only while nobody has).
    Acknowledge,
    /// Send a carer: opens a service record (from open or acknowledged; dispatching an
    /// unclaimed alert claims it too).
    Dispatch,
    /// Close it with an outcome (from any unresolved status).
    Resolve,
}

impl OperatorStep {
    /// The statuses the step may start from; from any other it is refused (409).
    pub fn allowed_from(self) -> &'static [Status] {
        match self {
            OperatorStep::Acknowledge => &[Status::Open],
            OperatorStep::Dispatch => &[Status::Open, Status::Acknowledged],
            OperatorStep::Resolve => &[Status::Open, Status::Acknowledged, Status::Dispatched],
        }
    }

    /// The status it leads to.
    pub fn to(self) -> Status {
        match self {
            OperatorStep::Acknowledge => Status::Acknowledged,
            OperatorStep::Dispatch => Status::Dispatched,
            OperatorStep::Resolve => Status::Resolved,
        }
    }

    /// Its name in errors (`acknowledge`, `dispatch`, `resolve`).
    pub fn name(self) -> &'static str {
        match self {
            OperatorStep::Acknowledge => "acknowledge",
            OperatorStep::Dispatch => "dispatch",
            OperatorStep::Resolve => "resolve",
        }
    }

    /// Its timeline action (`acknowledged`, `dispatched`, `resolved`).
    pub fn action(self) -> &'static str {
        self.to().as_str()
    }
}

/// What the engine may do to an alert on its own, decided from its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineStep {
    /// The rule's condition ended (`clear`, an absence ended).
    Clear,
    /// An escalation deadline came due.
    Escalate,
    /// A correlation (an alarm, then no movement) came due.
    Correlate,
}

/// The decision for an engine step on an alert in `status` with `severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Resolve it with outcome `cleared` (and a `cleared` timeline entry).
    Resolve,
    /// Record the step on the timeline; an operator closes it.
    NoteOnly,
    /// Raise its escalation level.
    Raise,
    /// Nothing to do: the step no longer applies.
    Ignore,
}

/// The lifecycle rule for engine steps (CONTRACT.md "Rules file"): a clear resolves only an
/// open, not yet acknowledged, non-critical alert — a critical one, or one an operator has
/// taken, waits for that operator; escalation, by time or by correlation, only climbs while
/// nobody has acknowledged it.
pub fn decide(step: EngineStep, status: Status, severity: Severity) -> Decision {
    match (step, status) {
        (_, Status::Resolved) => Decision::Ignore,
        (EngineStep::Clear, Status::Open) if severity != Severity::Critical => Decision::Resolve,
        (EngineStep::Clear, _) => Decision::NoteOnly,
        (EngineStep::Escalate, Status::Open) => Decision::Raise,
        (EngineStep::Escalate, _) => Decision::Ignore,
        // No movement after an alarm raises it to a supervisor like an unanswered one; an
        // operator who has taken it is already on the phone.
        (EngineStep::Correlate, Status::Open) => Decision::Raise,
        (EngineStep::Correlate, _) => Decision::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_resolves_only_open_non_critical_alerts() {
        assert_eq!(
            decide(EngineStep::Clear, Status::Open, Severity::High),
            Decision::Resolve
        );
        assert_eq!(
            decide(EngineStep::Clear, Status::Open, Severity::Critical),
            Decision::NoteOnly
        );
        assert_eq!(
            decide(EngineStep::Clear, Status::Acknowledged, Severity::Low),
            Decision::NoteOnly
        );
        assert_eq!(
            decide(EngineStep::Clear, Status::Resolved, Severity::Low),
            Decision::Ignore
        );
    }

    #[test]
    fn operators_take_only_open_alerts_and_close_any_unresolved_one() {
        assert_eq!(OperatorStep::Acknowledge.allowed_from(), [Status::Open]);
        assert!(
            !OperatorStep::Resolve
                .allowed_from()
                .contains(&Status::Resolved)
        );
        assert_eq!(OperatorStep::Resolve.action(), "resolved");
        assert_eq!(OperatorStep::Acknowledge.action(), "acknowledged");
    }

    #[test]
    fn escalation_climbs_only_while_unacknowledged() {
        assert_eq!(
            decide(EngineStep::Escalate, Status::Open, Severity::Critical),
            Decision::Raise
        );
        assert_eq!(
            decide(
                EngineStep::Escalate,
                Status::Acknowledged,
                Severity::Critical
            ),
            Decision::Ignore
        );
        assert_eq!(
            decide(EngineStep::Escalate, Status::Dispatched, Severity::Critical),
            Decision::Ignore
        );
    }
}
