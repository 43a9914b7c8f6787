//! Notifications outbox routes (README "Notifications"): the deliveries by status — the dead
//! letters above all — and re-driving a dead letter. Supervisors and admins only: a dead
//! letter means someone outside was not told about an alarm, which is theirs to follow up.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::user::Role;
use crate::store::DELIVERY_STATUSES;

/// Who may see and re-drive deliveries.
fn oversees_notifications(role: Role) -> bool {
    matches!(role, Role::Admin | Role::Supervisor)
}

/// The query of `GET /api/outbox`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// `dead` (default), `pending` or `delivered`.
    status: Option<String>,
    /// Only deliveries to this endpoint.
    endpoint: Option<String>,
    /// Page size (default 100, at most 1000).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<i64>,
}

/// `GET /api/outbox?status=dead&endpoint=…&limit=…&cursor=…`: `{"items": [...], "next":
/// cursor-or-null}`, oldest first; each item with its attempts and last error.
#[utoipa::path(
    get,
    path = "/api/outbox",
    tag = "outbox",
    params(ListQuery),
    responses(
        (status = 200, description = "Deliveries, oldest first, with attempts and last error", body = super::openapi::DeliveryPage),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    actor.require(oversees_notifications, "see notification deliveries")?;
    let status = q.status.as_deref().unwrap_or("dead");
    if !DELIVERY_STATUSES.contains(&status) {
        return Err(ApiError::BadRequest(format!(
            "status {status:?} is not one of {}",
            DELIVERY_STATUSES.join(", ")
        )));
    }
    if let Some(l) = q.limit
        && !(1..=1000).contains(&l)
    {
        return Err(ApiError::BadRequest(format!(
            "limit {l} is outside 1..=1000"
        )));
    }
    let (items, next) = s
        .store
        .outbox_list(
            status,
            q.endpoint.as_deref(),
            q.limit.unwrap_or(100),
            q.cursor,
            actor.scope.regions().as_deref(),
        )
        .await?;
    Ok(Json(json!({ "items": items, "next": next })))
}

/// `POST /api/outbox/{id}/redrive`: a dead letter goes back in the queue, due now, its
/// attempts counted afresh; answers the delivery. 404 unknown, 409 when it is not dead or
/// its endpoint is no longer configured (nothing could send it).
#[utoipa::path(
    post,
    path = "/api/outbox/{id}/redrive",
    tag = "outbox",
    params(("id" = i64, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The delivery, pending again", body = crate::store::Delivery),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such delivery in the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not a dead letter, or its endpoint is not configured", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn redrive(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    actor.require(oversees_notifications, "re-drive notification deliveries")?;
    let d = s.store.outbox_delivery(id).await?;
    // Another region's alert's delivery is not there for a supervisor of some regions.
    if super::alerts::visible(&s, &actor, d.alert_id)
        .await
        .is_err()
    {
        return Err(crate::store::StoreError::DeliveryNotFound(id).into());
    }
    if !s.outbox.is_configured(&d.endpoint) {
        return Err(crate::store::StoreError::DeliveryConflict {
            id,
            reason: format!(
                "its endpoint {:?} is not configured; add it back to [[notify.webhook]] and restart first",
                d.endpoint
            ),
        }
        .into());
    }
    let d = s.store.outbox_redrive(id, s.clock.now()).await?;
    tracing::info!(delivery = id, endpoint = %d.endpoint, by = %actor.name, "Dead letter re-driven");
    s.outbox.wake();
    Ok(Json(json!(d)))
}

/// The body of `POST /api/outbox/redrive`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RedriveAllBody {
    /// Every dead letter to this endpoint.
    endpoint: String,
}

/// `POST /api/outbox/redrive` (`{"endpoint"}`): every dead letter to that endpoint goes back
/// in the queue, as one redrive does; answers `{"redriven": n}`. 422 when the endpoint is not
/// configured.
#[utoipa::path(
    post,
    path = "/api/outbox/redrive",
    tag = "outbox",
    request_body = RedriveAllBody,
    responses(
        (status = 200, description = "`{\"redriven\": n}`", body = Object),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn redrive_all(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    extract::Json(body): extract::Json<RedriveAllBody>,
) -> Result<Json<Value>, ApiError> {
    actor.require(oversees_notifications, "re-drive notification deliveries")?;
    // An endpoint's dead letters span regions: only a caller of every region re-drives them all.
    if !matches!(actor.scope, crate::domain::region::Scope::All) {
        return Err(ApiError::Forbidden(
            "re-driving every dead letter of an endpoint takes a user of every region (an admin); re-drive your regions' one by one".into(),
        ));
    }
    if !s.outbox.is_configured(&body.endpoint) {
        return Err(ApiError::Invalid(format!(
            "endpoint {:?} is not configured (configured: {})",
            body.endpoint,
            s.outbox.endpoints().join(", ")
        )));
    }
    let n = s
        .store
        .outbox_redrive_all(&body.endpoint, s.clock.now())
        .await?;
    tracing::info!(endpoint = %body.endpoint, deliveries = n, by = %actor.name, "Dead letters re-driven");
    s.outbox.wake();
    Ok(Json(json!({ "redriven": n })))
}
