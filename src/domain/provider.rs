//! Service providers, their workers, and where a visit happened.

use serde::{Deserialize, Serialize};

use super::card::valid_phone;
use super::care::valid_resident_id;

/// A service provider (居家养老服务机构) working in a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Provider {
    /// Id chosen by the centre (`[A-Za-z0-9_.:-]{1,64}`).
    pub id: String,
    /// Name.
    pub name: String,
    /// The region it works in; who sees the region sees the provider.
    pub region: String,
    /// Phone of its dispatch desk.
    pub phone: Option<String>,
}

/// A carer of a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Worker {
    /// Id chosen by the centre.
    pub id: String,
    /// The provider employing them.
    pub provider_id: String,
    /// Name.
    pub name: String,
    /// Mobile, for the dispatcher to call.
    pub phone: Option<String>,
}

fn name_problems(out: &mut Vec<String>, id: &str, name: &str, phone: Option<&str>) {
    if !valid_resident_id(id) {
        out.push(format!("id {id:?} breaks [A-Za-z0-9_.:-]{{1,64}}"));
    }
    if name.trim().is_empty() || name.chars().count() > 200 {
        out.push("name: 1..=200 characters".into());
    }
    if phone.is_some_and(|p| !valid_phone(p)) {
        out.push("phone: not a phone number".into());
    }
}

impl Provider {
    /// Every problem, each naming its field; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        name_problems(&mut out, &self.id, &self.name, self.phone.as_deref());
        if !valid_resident_id(&self.region) {
            out.push(format!(
                "region {:?} breaks [A-Za-z0-9_.:-]{{1,64}}",
                self.region
            ));
        }
        out
    }
}

impl Worker {
    /// Every problem, each naming its field; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        name_problems(&mut out, &self.id, &self.name, self.phone.as_deref());
        out
    }
}

/// A check-in farther than this from the resident's home is flagged: a carer who clocks in
/// from elsewhere did not arrive (GPS error in town is tens of metres).
pub const FAR_METRES: f64 = 500.0;

/// Great-circle distance in metres between two WGS-84 points (haversine, mean Earth radius).
pub fn distance_m((lat1, lon1): (f64, f64), (lat2, lon2): (f64, f64)) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_great_circle_metres() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m((23.0, 113.0), (24.0, 113.0));
        assert!((d - 111_195.0).abs() < 50.0, "{d}");
        assert!(distance_m((23.1291, 113.2644), (23.1291, 113.2644)) < 0.01);
        // Tianhe to Yuexiu, Guangzhou: a few kilometres.
        let d = distance_m((23.1246, 113.3612), (23.1291, 113.2644));
        assert!((9_000.0..11_000.0).contains(&d), "{d}");
    }
}
