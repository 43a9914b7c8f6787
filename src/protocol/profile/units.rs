//! Unit conversions a profile may ask for: from the unit a vendor sends to the unit the
//! canonical field is defined in (CONTRACT.md field table). Every conversion is linear,
//! `canonical = a × value + b`. Names include the SenML unit symbols (RFC 8428 §12.1).

/// A conversion to a field's canonical unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    /// The source unit as written.
    pub unit: &'static str,
    a: f64,
    b: f64,
}

impl Conversion {
    /// Converts a value.
    pub fn apply(&self, v: f64) -> f64 {
        self.a * v + self.b
    }
}

/// A quantity: the fields measured in it, its canonical unit and the units accepted.
struct Quantity {
    fields: &'static [&'static str],
    canonical: &'static str,
    units: &'static [(&'static [&'static str], f64, f64)],
}

const QUANTITIES: &[Quantity] = &[
    Quantity {
        fields: &["temperature"],
        canonical: "°C",
        units: &[
            (&["Cel", "C", "°C", "celsius"], 1.0, 0.0),
            (&["F", "°F", "degF", "fahrenheit"], 5.0 / 9.0, -160.0 / 9.0),
            (&["K", "kelvin"], 1.0, -273.15),
        ],
    },
    Quantity {
        fields: &["heart_rate"],
        canonical: "beats per minute",
        units: &[
            (&["bpm", "beat/min", "beats/min", "1/min"], 1.0, 0.0),
            (&["beat/s", "Hz", "1/s"], 60.0, 0.0),
        ],
    },
    Quantity {
        fields: &["systolic", "diastolic"],
        canonical: "mmHg",
        units: &[
            (&["mmHg"], 1.0, 0.0),
            // 1 kPa = 7.500 62 mmHg.
            (&["kPa"], 7.500_62, 0.0),
        ],
    },
    Quantity {
        fields: &["spo2", "percent"],
        canonical: "%",
        units: &[
            (&["%", "%EL", "%RH"], 1.0, 0.0),
            // SenML "/" is a ratio 0..1.
            (&["/", "ratio"], 100.0, 0.0),
        ],
    },
    Quantity {
        fields: &["blood_glucose"],
        canonical: "mmol/L",
        units: &[
            (&["mmol/L", "mmol/l"], 1.0, 0.0),
            // Glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol).
            (&["mg/dL", "mg/dl"], 1.0 / 18.016, 0.0),
        ],
    },
    Quantity {
        fields: &["steps", "satellites"],
        canonical: "count",
        units: &[(&["count", "steps", "1"], 1.0, 0.0)],
    },
    Quantity {
        fields: &["voltage_v"],
        canonical: "V",
        units: &[(&["V"], 1.0, 0.0), (&["mV"], 0.001, 0.0)],
    },
    Quantity {
        fields: &["accuracy_m", "altitude_m"],
        canonical: "m",
        units: &[
            (&["m"], 1.0, 0.0),
            (&["km"], 1000.0, 0.0),
            (&["cm"], 0.01, 0.0),
            (&["ft"], 0.3048, 0.0),
        ],
    },
    Quantity {
        fields: &["speed_kmh"],
        canonical: "km/h",
        units: &[
            (&["km/h", "kmh"], 1.0, 0.0),
            (&["m/s"], 3.6, 0.0),
            (&["kn", "knots"], 1.852, 0.0),
            (&["mph"], 1.609_344, 0.0),
        ],
    },
    Quantity {
        fields: &["course_deg", "lat", "lon"],
        canonical: "degrees",
        units: &[
            (&["deg", "°", "lat", "lon"], 1.0, 0.0),
            (&["rad"], 180.0 / std::f64::consts::PI, 0.0),
        ],
    },
];

fn quantity(field: &str) -> Option<&'static Quantity> {
    QUANTITIES.iter().find(|q| q.fields.contains(&field))
}

/// The conversion of `unit` for `field`, or why there is none.
pub fn conversion(field: &str, unit: &str) -> Result<Conversion, String> {
    let Some(q) = quantity(field) else {
        return Err(format!(
            "{field} has no unit, so no unit conversion applies to it"
        ));
    };
    for (names, a, b) in q.units {
        if let Some(n) = names.iter().find(|n| **n == unit) {
            return Ok(Conversion {
                unit: n,
                a: *a,
                b: *b,
            });
        }
    }
    let known: Vec<&str> = q
        .units
        .iter()
        .flat_map(|(n, _, _)| n.iter().copied())
        .collect();
    Err(format!(
        "unit {unit:?} does not convert to {field} ({}); known units: {}",
        q.canonical,
        known.join(", ")
    ))
}

/// Whether `field` is a measured quantity (numbers a scale or unit may apply to).
pub fn is_measured(field: &str) -> bool {
    quantity(field).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(field: &str, unit: &str, v: f64) -> f64 {
        conversion(field, unit).unwrap().apply(v)
    }

    #[test]
    fn conversions_land_in_the_canonical_unit() {
        assert!((conv("temperature", "F", 98.6) - 37.0).abs() < 1e-9);
        assert!((conv("temperature", "K", 310.15) - 37.0).abs() < 1e-9);
        assert!((conv("blood_glucose", "mg/dL", 90.0) - 4.995).abs() < 1e-3);
        assert!((conv("systolic", "kPa", 16.0) - 120.0).abs() < 0.01);
        assert_eq!(conv("percent", "/", 0.5), 50.0);
        assert_eq!(conv("voltage_v", "mV", 3700.0), 3.7);
        assert_eq!(conv("heart_rate", "beat/min", 72.0), 72.0);
    }

    #[test]
    fn conversions_that_do_not_apply_are_explained() {
        let e = conversion("heart_rate", "F").unwrap_err();
        assert!(e.contains("beats per minute"), "{e}");
        let e = conversion("state", "F").unwrap_err();
        assert!(e.contains("no unit"), "{e}");
    }
}
