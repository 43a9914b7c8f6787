//! `GET /api/reports/monthly`: the month's figures for a region and its providers
//! (CONTRACT.md "Care records").

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::extract::Query;
use super::{Actor, ApiError, AppState};
use crate::domain::care::DEFAULT_TIME_ZONE;
use crate::domain::region::Scope;
use crate::domain::report::{MonthlyReport, month_bounds};
use crate::store::StoreError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct MonthlyQuery {
    /// The month, `YYYY-MM`, counted in Asia/Shanghai.
    month: String,
    /// The region and everything below it; absent: every region the caller sees.
    region: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// `?month=YYYY-MM&region=…[&format=csv]`: the region and everything below it, which must be
/// among the caller's regions (404 otherwise); without `region`, every region the caller
/// sees. Months are counted in the centre's time zone, Asia/Shanghai.
#[utoipa::path(
    get,
    path = "/api/reports/monthly",
    tag = "reports",
    params(MonthlyQuery),
    responses(
        (status = 200, description = "The month's figures", content((crate::domain::report::MonthlyReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "Region outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn monthly(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<MonthlyQuery>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            return Err(ApiError::BadRequest(format!(
                "format {f:?} is not json or csv"
            )));
        }
    };
    let tz: chrono_tz::Tz = DEFAULT_TIME_ZONE
        .parse()
        .unwrap_or(chrono_tz::Asia::Shanghai);
    let bounds = month_bounds(&q.month, tz)
        .ok_or_else(|| ApiError::BadRequest(format!("month {:?} is not YYYY-MM", q.month)))?;
    let regions = match &q.region {
        Some(r) => {
            if !actor.scope.sees(r) {
                return Err(StoreError::RegionNotFound(r.clone()).into());
            }
            let tree = s.regions.read().unwrap_or_else(|e| e.into_inner());
            let mut below: Vec<String> = tree.below(std::slice::from_ref(r)).into_iter().collect();
            below.sort();
            Some(below)
        }
        None => match &actor.scope {
            Scope::All => None,
            scope => scope.regions(),
        },
    };
    let (alerts, records) = s
        .store
        .report_facts(bounds.0, bounds.1, regions.as_deref())
        .await?;
    let report = MonthlyReport::compute(
        &q.month,
        q.region,
        DEFAULT_TIME_ZONE,
        bounds,
        &alerts,
        &records,
    );
    if csv {
        let body = report
            .to_csv()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
    } else {
        Ok(Json(report).into_response())
    }
}
