//! Durations as operators write them: `90s`, `5m`, `12h`, `1d` (CONTRACT.md "Rules file").

use chrono::Duration;

/// Parses `<n><s|m|h|d>`; the error says what was wrong.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let Some(unit) = t.chars().last() else {
        return Err("an empty duration; write e.g. \"90s\", \"5m\", \"12h\" or \"1d\"".into());
    };
    let secs_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => {
            return Err(format!(
                "duration {text:?} needs a unit: s, m, h or d (e.g. \"5m\")"
            ));
        }
    };
    let n: i64 = t[..t.len() - 1]
        .parse()
        .map_err(|_| format!("duration {text:?} is not a whole number followed by s, m, h or d"))?;
    if n <= 0 {
        return Err(format!("duration {text:?} must be more than zero"));
    }
    if n > 366 * 86_400 / secs_per {
        return Err(format!("duration {text:?} is longer than a year"));
    }
    Ok(Duration::seconds(n * secs_per))
}

/// Writes a duration back in the largest unit that divides it.
pub fn format(d: Duration) -> String {
    let s = d.num_seconds();
    for (unit, per) in [('d', 86_400), ('h', 3600), ('m', 60)] {
        if s != 0 && s % per == 0 {
            return format!("{}{unit}", s / per);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_name_what_is_wrong() {
        assert_eq!(parse("90s"), Ok(Duration::seconds(90)));
        assert_eq!(parse("5m"), Ok(Duration::minutes(5)));
        assert_eq!(parse("12h"), Ok(Duration::hours(12)));
        assert_eq!(parse("1d"), Ok(Duration::days(1)));
        assert!(parse("5").unwrap_err().contains("unit"));
        assert!(parse("m").unwrap_err().contains("whole number"));
        assert!(parse("0s").unwrap_err().contains("more than zero"));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("400d").unwrap_err().contains("year"));
        assert_eq!(format(Duration::minutes(90)), "90m");
        assert_eq!(format(Duration::seconds(61)), "61s");
    }
}
