//! `[notify]` and its `[[notify.webhook]]` endpoints: where the notifications outbox delivers
//! (README "Notifications"). Read strictly like the rest of the engine config; every problem
//! is located by file, line and key.

use std::collections::HashSet;

use super::Secret;
use super::reader::Section;
use crate::domain::alert::Severity;

/// Why a notification was written: the alert opened (critical alerts only) or climbed an
/// escalation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A critical alert opened (level 0).
    Opened,
    /// An alert reached an escalation level (unacknowledged, or a correlation raised it).
    Escalated,
}

impl Cause {
    /// Every cause.
    pub const ALL: [Cause; 2] = [Cause::Opened, Cause::Escalated];

    /// The name in config, payloads and the API; the same as the alert change's action.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Opened => "opened",
            Cause::Escalated => "escalated",
        }
    }

    /// Parses [`Cause::as_str`].
    pub fn parse(s: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What a webhook's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The whole notification as JSON (the stored payload).
    Json,
    /// An SMS gateway's shape: `{"to": [...], "text": "..."}`.
    Sms,
    /// No notifications: the export feed's pages (docs/EXPORT.md), pushed in order as they
    /// come, each sent until the endpoint answers 2xx.
    Export,
}

/// One `[[notify.webhook]]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Unique name: the `endpoint` of its deliveries, a metric label. `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// Where to POST (`http://` or `https://`; redirects are not followed).
    pub url: url::Url,
    /// Key of the HMAC-SHA256 signature (`X-Anxin-Signature`); from `secret` or the
    /// environment variable named by `secret_env`.
    pub secret: Secret,
    /// Body shape.
    pub format: WebhookFormat,
    /// `sms` only: the numbers every message goes to.
    pub to: Vec<String>,
    /// Which causes this endpoint is sent (default both).
    pub causes: Vec<Cause>,
    /// Only alerts of these kinds (`None`: every kind).
    pub kinds: Option<Vec<String>>,
    /// Only alerts at least this severe (default `low`: every notification).
    pub min_severity: Severity,
    /// Attempts before a delivery becomes a dead letter (re-drivable through the API).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub backoff_initial_ms: u64,
    /// The longest wait between attempts.
    pub backoff_max_ms: u64,
    /// How long one attempt may take, connection included.
    pub timeout_ms: u64,
}

impl WebhookConfig {
    /// Whether a notification of `cause` about an alert of `kind` and `severity` goes here.
    pub fn wants(&self, cause: Cause, kind: &str, severity: Severity) -> bool {
        // An export endpoint takes the feed's pages, never notifications.
        self.format != WebhookFormat::Export
            && self.causes.contains(&cause)
            && self
                .kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == kind))
            && severity.rank() <= self.min_severity.rank()
    }
}

/// `[notify]`.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The endpoints; none means notifications are written and never sent.
    pub webhooks: Vec<WebhookConfig>,
    /// Most notifications fanned out per round, and most attempts in flight (shared equally
    /// between the endpoints): the outbox is a table, so this is its only bound in memory. A
    /// larger backlog waits in the table, oldest first; alerts are never held back by it.
    pub batch: usize,
    /// Longest pause between looks at the table when nothing woke the dispatcher (new alert
    /// changes and redrives wake it at once).
    pub poll_ms: u64,
    /// Notifications delivered everywhere are deleted this many days after they were written;
    /// those with a pending or dead delivery are kept.
    pub retention_days: u64,
    /// `secret_env` names read from the file, looked up once the environment is read
    /// ([`resolve_secrets`]); empty afterwards.
    pub(crate) pending_secrets: Vec<PendingSecret>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhooks: Vec::new(),
            batch: 64,
            poll_ms: 1_000,
            retention_days: 30,
            pending_secrets: Vec::new(),
        }
    }
}

/// Webhook defaults, in one place.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 15;
/// First retry after 1 s.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 1_000;
/// Retries at most 5 min apart: with 15 attempts a delivery is retried for about 40 minutes.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 300_000;
/// One attempt: 10 s.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The shortest secret taken: 16 characters (as the admin token).
pub const MIN_SECRET_CHARS: usize = 16;

/// A webhook's `secret_env` still to be looked up: (webhook index, variable, line, key path).
pub type PendingSecret = (usize, String, usize, String);

/// Reads `[notify]` into `cfg`; the `secret_env` names wait in `cfg` for
/// [`resolve_secrets`].
pub fn read(mut s: Section<'_, '_>, cfg: &mut NotifyConfig) {
    if let Some(n) = s.int("batch", 1..=1_000) {
        cfg.batch = n as usize;
    }
    if let Some(n) = s.int("poll_ms", 50..=60_000) {
        cfg.poll_ms = n as u64;
    }
    if let Some(n) = s.int("retention_days", 1..=3_650) {
        cfg.retention_days = n as u64;
    }
    let mut pending = Vec::new();
    let mut names = HashSet::new();
    for mut w in s.tables("webhook") {
        let name = match w.string("name") {
            Some((n, line)) if !valid_name(&n) => {
                w.problem(line, "name", format!("{n:?} breaks [A-Za-z0-9_.-]{{1,64}}"));
                None
            }
            Some((n, line)) if !names.insert(n.clone()) => {
                w.problem(line, "name", format!("{n:?} names another webhook already"));
                None
            }
            Some((n, _)) => Some(n),
            None => {
                w.problem_here("name is mandatory");
                None
            }
        };
        let url = match w.string("url") {
            Some((u, line)) => match url::Url::parse(&u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
                Ok(_) => {
                    w.problem(
                        line,
                        "url",
                        format!("{u:?}: expected http:// or https://HOST/…"),
                    );
                    None
                }
                Err(e) => {
                    w.problem(line, "url", format!("{u:?} is not a URL: {e}"));
                    None
                }
            },
            None => {
                w.problem_here("url is mandatory");
                None
            }
        };
        let inline = w.string("secret");
        let env = w.string("secret_env");
        let secret = match (inline, env) {
            (Some(_), Some((_, line))) => {
                w.problem(line, "secret_env", "give secret or secret_env, not both");
                None
            }
            (Some((sec, line)), None) => {
                if sec.chars().count() < MIN_SECRET_CHARS {
                    w.problem(
                        line,
                        "secret",
                        format!("must be at least {MIN_SECRET_CHARS} characters"),
                    );
                    None
                } else {
                    Some(Secret::new(sec))
                }
            }
            (None, Some((var, line))) => {
                pending.push((cfg.webhooks.len(), var, line, w.key_path("secret_env")));
                // Filled in when the environment is read.
                Some(Secret::new(String::new()))
            }
            (None, None) => {
                w.problem_here(
                    "secret or secret_env is mandatory: every delivery is signed (X-Anxin-Signature)",
                );
                None
            }
        };
        let format = match w.choice("format", &["json", "sms", "export"]).as_deref() {
            Some("sms") => WebhookFormat::Sms,
            Some("export") => WebhookFormat::Export,
            _ => WebhookFormat::Json,
        };
        let to = w.text_list("to");
        let to = match (format, to) {
            (WebhookFormat::Sms, Some((to, line))) => {
                if let Some(bad) = to.iter().find(|n| !valid_phone(n)) {
                    w.problem(
                        line,
                        "to",
                        format!(
                            "{bad:?} is not a phone number (digits, an optional leading +, 3..=20)"
                        ),
                    );
                }
                to
            }
            (WebhookFormat::Sms, None) => {
                w.problem_here("format = \"sms\" needs `to`, the numbers to send to");
                Vec::new()
            }
            (WebhookFormat::Json | WebhookFormat::Export, Some((_, line))) => {
                w.problem(line, "to", "only format = \"sms\" takes `to`");
                Vec::new()
            }
            (WebhookFormat::Json | WebhookFormat::Export, None) => Vec::new(),
        };
        let causes = match w.text_list("triggers") {
            Some((list, line)) => {
                let mut out = Vec::new();
                for t in &list {
                    match Cause::parse(t) {
                        Some(c) if !out.contains(&c) => out.push(c),
                        Some(_) => {}
                        None => w.problem(
                            line,
                            "triggers",
                            format!("{t:?} is not one of opened, escalated"),
                        ),
                    }
                }
                out
            }
            None => Cause::ALL.to_vec(),
        };
        let kinds = w.text_list("kinds").map(|(k, _)| k);
        let min_severity = w
            .choice("min_severity", &["critical", "high", "medium", "low"])
            .and_then(|s| Severity::parse(&s))
            .unwrap_or(Severity::Low);
        let max_attempts = w
            .int("max_attempts", 1..=1_000)
            .map_or(DEFAULT_MAX_ATTEMPTS, |n| n as u32);
        let backoff_initial_ms = w
            .int("backoff_initial_ms", 10..=3_600_000)
            .map_or(DEFAULT_BACKOFF_INITIAL_MS, |n| n as u64);
        let backoff_max_ms = w
            .int("backoff_max_ms", 10..=86_400_000)
            .map_or(DEFAULT_BACKOFF_MAX_MS, |n| n as u64);
        if backoff_max_ms < backoff_initial_ms {
            w.problem_here("backoff_max_ms must not be below backoff_initial_ms");
        }
        let timeout_ms = w
            .int("timeout_ms", 100..=300_000)
            .map_or(DEFAULT_TIMEOUT_MS, |n| n as u64);
        w.finish();
        if let (Some(name), Some(url), Some(secret)) = (name, url, secret) {
            cfg.webhooks.push(WebhookConfig {
                name,
                url,
                secret,
                format,
                to,
                causes,
                kinds,
                min_severity,
                max_attempts,
                backoff_initial_ms,
                backoff_max_ms,
                timeout_ms,
            });
        } else if let Some(last) = pending.last()
            && last.0 == cfg.webhooks.len()
        {
            // This webhook was refused; its secret is not looked up.
            pending.pop();
        }
    }
    s.finish();
    cfg.pending_secrets = pending;
}

/// Looks up each webhook's `secret_env` in the environment; a missing or short one is a
/// problem located at its `secret_env` line in `file`.
pub fn resolve_secrets(
    cfg: &mut NotifyConfig,
    file: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<super::reader::Problem> {
    let mut problems = Vec::new();
    for (i, var, line, key) in std::mem::take(&mut cfg.pending_secrets) {
        let message = match env(&var) {
            Some(v) if v.chars().count() >= MIN_SECRET_CHARS => {
                cfg.webhooks[i].secret = Secret::new(v);
                continue;
            }
            Some(_) => format!("${var} must be at least {MIN_SECRET_CHARS} characters"),
            None => format!("the environment variable {var} is not set"),
        };
        problems.push(super::reader::Problem {
            file: file.to_owned(),
            line,
            key,
            message,
        });
    }
    problems
}

/// A webhook name: `[A-Za-z0-9_.-]{1,64}` (a metric label and a path-safe word).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A phone number an SMS gateway takes: digits with an optional leading `+`, 3 to 20 of them
/// (short codes such as 120 included).
fn valid_phone(n: &str) -> bool {
    let digits = n.strip_prefix('+').unwrap_or(n);
    (3..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}
