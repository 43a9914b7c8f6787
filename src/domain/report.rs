//! The monthly report a centre sends the civil-affairs bureau (PLATFORMS.md: by the 10th,
//! services, items, satisfaction), with the call-centre figures (ALERTING.md: time to answer).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Serialize;

/// An alert opened in the month, as the report reads it.
#[derive(Debug, Clone)]
pub struct AlertFacts {
    /// Kind.
    pub kind: String,
    /// Severity.
    pub severity: String,
    /// Opened.
    pub opened_at: DateTime<Utc>,
    /// First acknowledged (claimed), if ever.
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// A service record touching the month, as the report reads it.
#[derive(Debug, Clone)]
pub struct RecordFacts {
    /// Provider.
    pub provider: String,
    /// When the alert it answers opened (`None` for a planned visit).
    pub alert_opened_at: Option<DateTime<Utc>>,
    /// Checked in on site.
    pub check_in_at: Option<DateTime<Utc>>,
    /// Checked out: the service is done.
    pub check_out_at: Option<DateTime<Utc>>,
    /// Service items done.
    pub items: Vec<String>,
    /// The resident's rating, 1..=5.
    pub rating: Option<i64>,
    /// The follow-up call.
    pub follow_up_at: Option<DateTime<Utc>>,
}

/// Time to acknowledge: the call centre's answer-time figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AckFigures {
    /// Alerts opened in the month.
    pub alerts: usize,
    /// Of them, acknowledged (at any time since).
    pub acknowledged: usize,
    /// Median seconds from opening to acknowledgement, of the acknowledged ones.
    pub p50_s: Option<f64>,
    /// 90th percentile.
    pub p90_s: Option<f64>,
    /// Share of the month's alerts acknowledged within 60 s (an alert never acknowledged
    /// counts against it), 0..=1.
    pub within_60s: Option<f64>,
    /// Within 180 s.
    pub within_180s: Option<f64>,
}

/// The service figures of one provider, or of all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ServiceFigures {
    /// Services done (checked out) in the month.
    pub services_done: usize,
    /// Of those, how often each item was done.
    pub by_item: BTreeMap<String, usize>,
    /// Ratings given among them.
    pub rated: usize,
    /// Their average, 1..=5.
    pub average_rating: Option<f64>,
    /// Follow-up calls (回访) made in the month.
    pub follow_ups: usize,
    /// Carers on site in the month after an alert.
    pub arrivals: usize,
    /// Median seconds from the alert to the carer's check-in.
    pub arrival_p50_s: Option<f64>,
    /// 90th percentile.
    pub arrival_p90_s: Option<f64>,
}

/// The month's figures.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MonthlyReport {
    /// `YYYY-MM`.
    pub month: String,
    /// The region reported on; `None`: every region the caller sees.
    pub region: Option<String>,
    /// The time zone the month is counted in.
    pub time_zone: String,
    /// Alerts opened, by kind.
    pub alerts_by_kind: BTreeMap<String, usize>,
    /// Alerts opened, by severity.
    pub alerts_by_severity: BTreeMap<String, usize>,
    /// Time to acknowledge.
    pub acknowledge: AckFigures,
    /// Services, all providers.
    pub services: ServiceFigures,
    /// Services, by provider.
    pub providers: BTreeMap<String, ServiceFigures>,
}

/// `[start, end)` of month `YYYY-MM` in `tz`.
pub fn month_bounds(month: &str, tz: chrono_tz::Tz) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let start = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)?;
    let next = if start.month() == 12 {
        NaiveDate::from_ymd_opt(start.year() + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(start.year(), start.month() + 1, 1)?
    };
    let at = |d: NaiveDate| {
        tz.from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    Some((at(start)?, at(next)?))
}

/// The nearest-rank percentile `p` (0..=100) of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

fn services(records: &[&RecordFacts], from: DateTime<Utc>, to: DateTime<Utc>) -> ServiceFigures {
    let within = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= from && t < to);
    let mut f = ServiceFigures::default();
    let mut ratings = Vec::new();
    let mut arrivals = Vec::new();
    for r in records {
        if within(r.check_out_at) {
            f.services_done += 1;
            for item in &r.items {
                *f.by_item.entry(item.clone()).or_default() += 1;
            }
            if let Some(x) = r.rating {
                ratings.push(x as f64);
            }
        }
        if within(r.follow_up_at) {
            f.follow_ups += 1;
        }
        if within(r.check_in_at)
            && let (Some(opened), Some(arrived)) = (r.alert_opened_at, r.check_in_at)
        {
            arrivals.push(seconds(opened, arrived));
        }
    }
    f.rated = ratings.len();
    f.average_rating =
        (!ratings.is_empty()).then(|| ratings.iter().sum::<f64>() / ratings.len() as f64);
    arrivals.sort_by(f64::total_cmp);
    f.arrivals = arrivals.len();
    f.arrival_p50_s = percentile(&arrivals, 50.0);
    f.arrival_p90_s = percentile(&arrivals, 90.0);
    f
}

impl MonthlyReport {
    /// The figures of `alerts` (opened in `[from, to)`) and `records` (any touching it).
    pub fn compute(
        month: &str,
        region: Option<String>,
        time_zone: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        alerts: &[AlertFacts],
        records: &[RecordFacts],
    ) -> MonthlyReport {
        let mut by_kind = BTreeMap::new();
        let mut by_severity = BTreeMap::new();
        let mut acks = Vec::new();
        let opened: Vec<&AlertFacts> = alerts
            .iter()
            .filter(|a| a.opened_at >= from && a.opened_at < to)
            .collect();
        for a in &opened {
            *by_kind.entry(a.kind.clone()).or_insert(0) += 1;
            *by_severity.entry(a.severity.clone()).or_insert(0) += 1;
            if let Some(at) = a.acknowledged_at {
                acks.push(seconds(a.opened_at, at));
            }
        }
        acks.sort_by(f64::total_cmp);
        let share = |limit: f64| {
            (!opened.is_empty())
                .then(|| acks.iter().filter(|s| **s <= limit).count() as f64 / opened.len() as f64)
        };
        let acknowledge = AckFigures {
            alerts: opened.len(),
            acknowledged: acks.len(),
            p50_s: percentile(&acks, 50.0),
            p90_s: percentile(&acks, 90.0),
            within_60s: share(60.0),
            within_180s: share(180.0),
        };
        let all: Vec<&RecordFacts> = records.iter().collect();
        let mut providers: BTreeMap<String, Vec<&RecordFacts>> = BTreeMap::new();
        for r in records {
            providers.entry(r.provider.clone()).or_default().push(r);
        }
        MonthlyReport {
            month: month.to_owned(),
            region,
            time_zone: time_zone.to_owned(),
            alerts_by_kind: by_kind,
            alerts_by_severity: by_severity,
            acknowledge,
            services: services(&all, from, to),
            providers: providers
                .into_iter()
                .map(|(p, rs)| (p, services(&rs, from, to)))
                .filter(|(_, f)| f.services_done + f.follow_ups + f.arrivals > 0)
                .collect(),
        }
    }

    /// The report as CSV: one figure per line, `section,provider,key,value`.
    pub fn to_csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["section", "provider", "key", "value"])?;
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        w.write_record(["report", "", "month", &self.month])?;
        w.write_record(["report", "", "region", self.region.as_deref().unwrap_or("")])?;
        w.write_record(["report", "", "time_zone", &self.time_zone])?;
        for (k, n) in &self.alerts_by_kind {
            w.write_record(["alerts_by_kind", "", k, &n.to_string()])?;
        }
        for (k, n) in &self.alerts_by_severity {
            w.write_record(["alerts_by_severity", "", k, &n.to_string()])?;
        }
        let a = &self.acknowledge;
        for (k, v) in [
            ("alerts", a.alerts.to_string()),
            ("acknowledged", a.acknowledged.to_string()),
            ("p50_s", opt(a.p50_s)),
            ("p90_s", opt(a.p90_s)),
            ("within_60s", opt(a.within_60s)),
            ("within_180s", opt(a.within_180s)),
        ] {
            w.write_record(["acknowledge", "", k, &v])?;
        }
        let all = std::iter::once(("", &self.services))
            .chain(self.providers.iter().map(|(p, f)| (p.as_str(), f)));
        for (provider, f) in all {
            for (k, v) in [
                ("services_done", f.services_done.to_string()),
                ("rated", f.rated.to_string()),
                ("average_rating", opt(f.average_rating)),
                ("follow_ups", f.follow_ups.to_string()),
                ("arrivals", f.arrivals.to_string()),
                ("arrival_p50_s", opt(f.arrival_p50_s)),
                ("arrival_p90_s", opt(f.arrival_p90_s)),
            ] {
                w.write_record(["services", provider, k, &v])?;
            }
            for (item, n) in &f.by_item {
                w.write_record(["services_by_item", provider, item, &n.to_string()])?;
            }
        }
        let bytes = w.into_inner().map_err(|e| e.into_error())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn months_are_counted_in_the_time_zone_and_percentiles_by_nearest_rank() {
        let (a, b) = month_bounds("2026-12", chrono_tz::Asia::Shanghai).unwrap();
        assert_eq!(a, t("2026-11-30T16:00:00Z"));
        assert_eq!(b, t("2026-12-31T16:00:00Z"));
        assert!(month_bounds("2026-13", chrono_tz::Asia::Shanghai).is_none());
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
