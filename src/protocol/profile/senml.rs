//! SenML (RFC 8428) JSON packs resolved into records a profile maps like any other element.
//!
//! Resolution follows RFC 8428 §4.6: base fields (`bn`, `bt`, `bu`, `bv`, `bs`) apply to the
//! record carrying them and every later one until replaced; the resolved name is `bn + n`,
//! the time `bt + t` (values below 2^28 are relative to now, §4.5.3), the value `bv + v`,
//! the sum `bs + s`, the unit `u` or else `bu`. The base name in effect is kept as `bn` too, so
//! a profile can take the device id from it.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// RFC 8428 §4.5.3: times below 2^28 seconds are relative to the current time.
const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;

/// RFC 8428 §4.4: the highest version this resolver understands (base version 10).
const MAX_VERSION: i64 = 10;

/// Resolves a pack. Each item is a resolved record (with its position in the pack) or why
/// that record is invalid; records carrying only base fields yield nothing.
pub fn resolve(pack: &[Value], now: DateTime<Utc>) -> Vec<(usize, Result<Value, String>)> {
    let mut bn = String::new();
    let (mut bt, mut bv, mut bs) = (0.0_f64, 0.0_f64, 0.0_f64);
    let mut bu: Option<String> = None;
    let now_s = now.timestamp_millis() as f64 / 1000.0;
    let mut out = Vec::new();
    for (i, rec) in pack.iter().enumerate() {
        let Some(r) = rec.as_object() else {
            out.push((i, Err(format!("SenML record {i} is not an object"))));
            continue;
        };
        let res = (|| -> Result<Option<Value>, String> {
            if let Some(v) = r.get("bver") {
                match v.as_i64() {
                    Some(n) if n <= MAX_VERSION => {}
                    _ => {
                        return Err(format!(
                            "SenML version {v} is not supported (at most {MAX_VERSION})"
                        ));
                    }
                }
            }
            if let Some(v) = r.get("bn") {
                bn = v.as_str().ok_or("bn is not a string")?.to_owned();
            }
            if let Some(v) = r.get("bt") {
                bt = v.as_f64().ok_or("bt is not a number")?;
            }
            if let Some(v) = r.get("bu") {
                bu = Some(v.as_str().ok_or("bu is not a string")?.to_owned());
            }
            if let Some(v) = r.get("bv") {
                bv = v.as_f64().ok_or("bv is not a number")?;
            }
            if let Some(v) = r.get("bs") {
                bs = v.as_f64().ok_or("bs is not a number")?;
            }
            let n = match r.get("n") {
                None => "",
                Some(v) => v.as_str().ok_or("n is not a string")?,
            };
            let has_value = ["v", "vs", "vb", "vd", "s"]
                .iter()
                .any(|k| r.contains_key(*k));
            if n.is_empty() && !has_value {
                // Base fields only (a pack header): nothing to report.
                return Ok(None);
            }
            let name = format!("{bn}{n}");
            if name.is_empty() {
                return Err("the record has no name (neither bn nor n)".into());
            }
            let mut t = bt
                + match r.get("t") {
                    None => 0.0,
                    Some(v) => v.as_f64().ok_or("t is not a number")?,
                };
            if t < RELATIVE_TIME_LIMIT {
                t += now_s;
            }
            let mut o = Map::new();
            o.insert("n".into(), Value::String(name));
            if !bn.is_empty() {
                o.insert("bn".into(), Value::String(bn.clone()));
            }
            if let Some(u) = r.get("u").and_then(Value::as_str).or(bu.as_deref()) {
                o.insert("u".into(), Value::String(u.to_owned()));
            }
            if let Some(v) = r.get("v") {
                let v = v.as_f64().ok_or("v is not a number")? + bv;
                o.insert("v".into(), number(v));
            }
            for k in ["vs", "vd"] {
                if let Some(v) = r.get(k) {
                    o.insert(
                        k.into(),
                        Value::String(v.as_str().ok_or(format!("{k} is not a string"))?.to_owned()),
                    );
                }
            }
            if let Some(v) = r.get("vb") {
                o.insert(
                    "vb".into(),
                    Value::Bool(v.as_bool().ok_or("vb is not a boolean")?),
                );
            }
            if let Some(v) = r.get("s") {
                o.insert(
                    "s".into(),
                    number(v.as_f64().ok_or("s is not a number")? + bs),
                );
            }
            if let Some(v) = r.get("ut") {
                o.insert("ut".into(), number(v.as_f64().ok_or("ut is not a number")?));
            }
            o.insert("t".into(), number(t));
            Ok(Some(Value::Object(o)))
        })();
        match res {
            Ok(Some(v)) => out.push((i, Ok(v))),
            Ok(None) => {}
            Err(e) => out.push((i, Err(format!("SenML record {i}: {e}")))),
        }
    }
    out
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base_fields_carry_forward() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let pack = json!([
            {"bn": "urn:dev:imei:861234567890123:", "bt": 1.7e9, "bu": "Cel", "n": "temp", "v": 36.5},
            {"n": "heart_rate", "u": "beat/min", "v": 72, "t": 5},
            {"bn": "urn:dev:imei:999:", "n": "temp", "v": 20},
            {"bt": 10, "n": "x", "vb": true},
        ]);
        let r = resolve(pack.as_array().unwrap(), now);
        let v: Vec<Value> = r.into_iter().map(|(_, x)| x.unwrap()).collect();
        assert_eq!(v[0]["n"], "urn:dev:imei:861234567890123:temp");
        assert_eq!(v[0]["u"], "Cel");
        assert_eq!(v[0]["t"], 1.7e9);
        assert_eq!(v[1]["u"], "beat/min");
        assert_eq!(v[1]["t"], 1.7e9 + 5.0);
        assert_eq!(v[2]["bn"], "urn:dev:imei:999:");
        assert_eq!(v[2]["u"], "Cel");
        // bt 10 is relative (below 2^28): now + 10 s.
        assert_eq!(v[3]["t"], 1_700_000_010.0);
    }

    #[test]
    fn bad_records_are_refused_one_by_one() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let pack =
            json!([{"n": "a", "v": "x"}, 5, {"bver": 99, "n": "b", "v": 1}, {"n": "c", "v": 1}]);
        let r = resolve(pack.as_array().unwrap(), now);
        assert!(r[0].1.as_ref().unwrap_err().contains("v is not a number"));
        assert!(r[1].1.is_err());
        assert!(r[2].1.as_ref().unwrap_err().contains("version"));
        assert_eq!(r[3].1.as_ref().unwrap()["n"], "c");
    }
}
