//! Topic patterns of vendor profiles: an MQTT topic filter in which one level may be
//! `{device_id}` (captured) and which may start with `{root}` (the configured topic root).

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Matches exactly this text.
    Lit(String),
    /// `+`: any one level.
    Any,
    /// `{device_id}`: any one level, captured as the device id.
    Device,
    /// `#`: the rest of the topic, zero or more levels (MQTT 3.1.1 §4.7.1.2).
    Rest,
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    /// The pattern as written, `{root}` expanded.
    pub text: String,
    levels: Vec<Level>,
}

impl TopicPattern {
    /// Parses `pattern`; a leading `{root}` is replaced by `root`.
    pub fn parse(pattern: &str, root: &str) -> Result<TopicPattern, String> {
        let expanded = match pattern.strip_prefix("{root}") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{root}{rest}"),
            _ => pattern.to_owned(),
        };
        if expanded.is_empty() {
            return Err("the topic pattern is empty".into());
        }
        let parts: Vec<&str> = expanded.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Any,
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("{pattern:?}: \"#\" may only be the last level")),
                "{device_id}" => {
                    if levels.contains(&Level::Device) {
                        return Err(format!("{pattern:?}: \"{{device_id}}\" may appear once"));
                    }
                    Level::Device
                }
                lit => {
                    if lit.contains(['+', '#']) {
                        return Err(format!(
                            "{pattern:?}: level {lit:?} mixes a wildcard with text; \"+\" and \"#\" must fill a whole level"
                        ));
                    }
                    if lit.contains(['{', '}']) {
                        return Err(format!(
                            "{pattern:?}: level {lit:?}: the only placeholders are a whole-level {{device_id}} and a leading {{root}}"
                        ));
                    }
                    Level::Lit(lit.to_owned())
                }
            };
            levels.push(level);
        }
        Ok(TopicPattern {
            text: expanded,
            levels,
        })
    }

    /// The MQTT subscription filter (`{device_id}` becomes `+`).
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Lit(s) => s.as_str(),
                Level::Any | Level::Device => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether a level is `{device_id}`.
    pub fn has_device(&self) -> bool {
        self.levels.contains(&Level::Device)
    }

    /// `None` when `topic` does not match; else the `{device_id}` level, if the pattern has
    /// one. The captured text is not checked here (the decoder rejects a bad id, counted).
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Option<&'t str>> {
        let mut device = None;
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(device),
                _ => {
                    let part = parts.next()?;
                    match level {
                        Level::Lit(s) if s != part => return None,
                        Level::Device => device = Some(part),
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(device)
    }

    /// Whether some topic matches both patterns: a message would then go to only one of two
    /// profiles, so `check-config` refuses the pair.
    pub fn overlaps(&self, other: &TopicPattern) -> bool {
        let (a, b) = (&self.levels, &other.levels);
        for i in 0..a.len().max(b.len()) {
            match (a.get(i), b.get(i)) {
                (Some(Level::Rest), _) | (_, Some(Level::Rest)) => return true,
                (Some(Level::Lit(x)), Some(Level::Lit(y))) if x != y => return false,
                (Some(_), Some(_)) => {}
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s, "anxin/v1").unwrap()
    }

    #[test]
    fn patterns_match_and_capture() {
        let t = p("{root}/cat1/{device_id}/report");
        assert_eq!(t.text, "anxin/v1/cat1/{device_id}/report");
        assert_eq!(t.filter(), "anxin/v1/cat1/+/report");
        assert_eq!(t.matches("anxin/v1/cat1/86123/report"), Some(Some("86123")));
        assert_eq!(t.matches("anxin/v1/cat1/86123/other"), None);
        assert_eq!(t.matches("anxin/v1/cat1/86123/report/x"), None);
        assert_eq!(t.matches("anxin/v1/cat1/86123"), None);
        let h = p("/sys/+/#");
        assert_eq!(h.matches("/sys/pk/dev/thing/post"), Some(None));
        assert_eq!(h.matches("/sys/pk"), Some(None));
        assert_eq!(h.matches("sys/pk/x"), None);
    }

    #[test]
    fn bad_patterns_are_explained() {
        for bad in [
            "",
            "a/#/b",
            "a/b+/c",
            "a/{device_id}/{device_id}",
            "a/{imei}",
            "x/{root}/y",
        ] {
            assert!(TopicPattern::parse(bad, "r").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn overlap_is_detected() {
        assert!(p("a/+/c").overlaps(&p("a/b/c")));
        assert!(p("a/#").overlaps(&p("a/b/c")));
        assert!(!p("a/+/c").overlaps(&p("a/b/d")));
        assert!(!p("a/b").overlaps(&p("a/b/c")));
        assert!(p("{root}/devices/+/events").overlaps(&p("anxin/v1/devices/{device_id}/events")));
    }
}
