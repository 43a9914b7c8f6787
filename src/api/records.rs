//! Service records (CONTRACT.md "Care records"): check-in and check-out of a dispatched
//! carer's visit, and reading the records back by resident and month.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::user::Role;
use crate::store::{CheckOut, Position};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckInBody {
    at: Option<DateTime<Utc>>,
    lat: Option<f64>,
    lon: Option<f64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckOutBody {
    at: Option<DateTime<Utc>>,
    lat: Option<f64>,
    lon: Option<f64>,
    #[serde(default)]
    items: Vec<String>,
    content: Option<String>,
    outcome: Option<String>,
    rating: Option<i64>,
}

fn position(lat: Option<f64>, lon: Option<f64>) -> Result<Option<Position>, ApiError> {
    match (lat, lon) {
        (Some(lat), Some(lon)) => Ok(Some(Position { lat, lon })),
        (None, None) => Ok(None),
        _ => Err(ApiError::Invalid("lat and lon come together".into())),
    }
}

/// The record, or 404 (as for one that does not exist) when it is of a resident outside the
/// caller's regions, or of nobody and the caller does not see every region.
async fn visible(
    s: &AppState,
    actor: &Actor,
    id: i64,
) -> Result<crate::store::ServiceRecord, ApiError> {
    let r = s.store.get_record(id).await?;
    if actor.sees_resident(&s.registry, r.resident_id.as_deref()) {
        Ok(r)
    } else {
        Err(crate::store::StoreError::RecordNotFound(id).into())
    }
}

/// `POST /api/records/{id}/check-in`.
#[utoipa::path(
    post,
    path = "/api/records/{id}/check-in",
    tag = "records",
    params(("id" = i64, Path, description = "Service record id")),
    request_body = CheckInBody,
    responses(
        (status = 200, description = "Checked in", body = crate::store::ServiceRecord),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such record, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn check_in(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(b): extract::Json<CheckInBody>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::handles_alerts, "record visits")?;
    let record = visible(&s, &actor, id).await?;
    let pos = position(b.lat, b.lon)?;
    // How far from home: a check-in from elsewhere is flagged on the record.
    let home = match record.resident_id.as_deref() {
        Some(r) => s.store.get_resident(r).await?.and_then(|r| {
            let a = r.card.residence_address?;
            a.lat.zip(a.lon)
        }),
        None => None,
    };
    let distance = pos
        .zip(home)
        .map(|(p, home)| crate::domain::provider::distance_m((p.lat, p.lon), home));
    let r = s
        .store
        .check_in(id, &actor.name, s.clock.now(), b.at, pos, distance)
        .await?;
    Ok(Json(json!(r)))
}

/// `POST /api/records/{id}/check-out`.
#[utoipa::path(
    post,
    path = "/api/records/{id}/check-out",
    tag = "records",
    params(("id" = i64, Path, description = "Service record id")),
    request_body = CheckOutBody,
    responses(
        (status = 200, description = "Checked out", body = crate::store::ServiceRecord),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such record, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn check_out(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(b): extract::Json<CheckOutBody>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::handles_alerts, "record visits")?;
    visible(&s, &actor, id).await?;
    let c = CheckOut {
        at: b.at,
        position: position(b.lat, b.lon)?,
        items: b.items,
        content: b.content,
        outcome: b.outcome,
        rating: b.rating,
    };
    let r = s
        .store
        .check_out(id, &actor.name, s.clock.now(), &c)
        .await?;
    Ok(Json(json!(r)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FollowUpBody {
    /// `satisfied`, `neutral`, `unsatisfied` or `unreachable`.
    result: String,
    /// What was said.
    note: Option<String>,
    /// When the next visit is due, if one was agreed.
    next_visit_at: Option<DateTime<Utc>>,
}

/// `POST /api/records/{id}/follow-up`: the follow-up call (回访) after the visit, once.
#[utoipa::path(
    post,
    path = "/api/records/{id}/follow-up",
    tag = "records",
    params(("id" = i64, Path, description = "Service record id")),
    request_body = FollowUpBody,
    responses(
        (status = 200, description = "The follow-up call is recorded", body = crate::store::ServiceRecord),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such record, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn follow_up(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(b): extract::Json<FollowUpBody>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::handles_alerts, "record follow-up calls")?;
    visible(&s, &actor, id).await?;
    let r = s
        .store
        .follow_up(
            id,
            &actor.name,
            s.clock.now(),
            &b.result,
            b.note.as_deref(),
            b.next_visit_at,
        )
        .await?;
    Ok(Json(json!(r)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanBody {
    resident_id: String,
    provider: String,
    worker: String,
    planned_at: Option<DateTime<Utc>>,
}

/// `POST /api/records`: a planned home-care visit, not tied to an alert (201).
#[utoipa::path(
    post,
    path = "/api/records",
    tag = "records",
    request_body = PlanBody,
    responses(
        (status = 201, description = "The planned visit", body = crate::store::ServiceRecord),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn plan(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    extract::Json(b): extract::Json<PlanBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    actor.require(Role::handles_alerts, "plan visits")?;
    if !actor.sees_resident(&s.registry, Some(&b.resident_id)) {
        return Err(ApiError::Invalid(
            crate::store::StoreError::ResidentNotFound(b.resident_id).to_string(),
        ));
    }
    let crew = super::providers::crew(&s, &actor, &b.provider, &b.worker).await?;
    let r = s
        .store
        .plan_visit(
            &b.resident_id,
            &actor.name,
            s.clock.now(),
            &crew,
            b.planned_at,
        )
        .await
        .map_err(|e| match e {
            // The body names a resident that does not exist: invalid, not a missing route.
            crate::store::StoreError::ResidentNotFound(_) => ApiError::Invalid(e.to_string()),
            e => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(json!(r))))
}

/// `GET /api/records/{id}`.
#[utoipa::path(
    get,
    path = "/api/records/{id}",
    tag = "records",
    params(("id" = i64, Path, description = "Service record id")),
    responses(
        (status = 200, description = "The service record", body = crate::store::ServiceRecord),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "No such record, or outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn get_one(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(visible(&s, &actor, id).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only this resident's records.
    resident_id: Option<String>,
    /// Only records opened in this month, `YYYY-MM` (UTC).
    month: Option<String>,
    /// Page size, 1..=500 (default 100).
    limit: Option<i64>,
    /// The `next` of the previous page (a record id).
    cursor: Option<i64>,
}

/// The most records one page holds.
const MAX_LIMIT: i64 = 500;
/// `[start, end)` of a `YYYY-MM` month in the centre's time zone (Asia/Shanghai, as the
/// monthly report counts it), ms.
fn month_bounds(month: &str) -> Option<(i64, i64)> {
    let (a, b) = crate::domain::report::month_bounds(month, chrono_tz::Asia::Shanghai)?;
    Some((a.timestamp_millis(), b.timestamp_millis()))
}

/// `GET /api/records?resident_id=…&month=YYYY-MM&limit=…&cursor=…`: by id; `next` is the
/// cursor of the following page.
#[utoipa::path(
    get,
    path = "/api/records",
    tag = "records",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of service records by id", body = super::openapi::RecordPage),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = extract::limit(q.limit, 100, MAX_LIMIT)?;
    let (from, to) = match q.month.as_deref() {
        Some(m) => month_bounds(m)
            .ok_or_else(|| ApiError::BadRequest(format!("month {m:?} is not YYYY-MM")))?,
        None => (i64::MIN, i64::MAX),
    };
    let cursor = q.cursor.unwrap_or(0);
    if cursor < 0 {
        return Err(ApiError::BadRequest("cursor: a record id".into()));
    }
    let items = s
        .store
        .list_records(
            q.resident_id.as_deref(),
            from,
            to,
            cursor,
            limit,
            actor.scope.regions().as_deref(),
        )
        .await?;
    let next = (items.len() as i64 == limit).then(|| items.last().map(|r| r.id));
    Ok(Json(json!({ "items": items, "next": next.flatten() })))
}

#[cfg(test)]
mod tests {
    use super::month_bounds;

    #[test]
    fn months_are_shanghai_months_and_december_rolls_over() {
        // 2026-12-01T00:00+08:00 and 2027-01-01T00:00+08:00.
        assert_eq!(
            month_bounds("2026-12"),
            Some((1_796_054_400_000, 1_798_732_800_000))
        );
        assert_eq!(month_bounds("2026-13"), None);
        assert_eq!(month_bounds("26-1"), None);
        assert_eq!(month_bounds("2026-1x"), None);
    }
}
