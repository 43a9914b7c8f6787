//! Alert routes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::region::Scope;
use crate::domain::user::Role;
use crate::ingest::tcp::DownlinkOutcome;
use crate::store::{AlertChange, AlertFilter, StoreError};

/// Refuses (404, as for an alert that does not exist) an alert outside the caller's regions:
/// one of a resident of another region, or of a device assigned to nobody.
pub(super) async fn visible(s: &AppState, actor: &Actor, id: i64) -> Result<(), ApiError> {
    if matches!(actor.scope, Scope::All) {
        return Ok(());
    }
    let (resident, device) = s.store.alert_owner(id).await?;
    let seen = match resident {
        Some(r) => actor.sees_resident(&s.registry, Some(&r)),
        None => actor.sees_device(&s.registry, &device),
    };
    if seen {
        Ok(())
    } else {
        Err(StoreError::NotFound(id).into())
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only alerts in this status: `open`, `acknowledged`, `dispatched` or `resolved`.
    status: Option<String>,
    /// Only this device's alerts.
    device_id: Option<String>,
    /// Only alerts of this kind (`sos`, `fall`, …).
    kind: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

const STATUSES: [&str; 4] = ["open", "acknowledged", "dispatched", "resolved"];

fn parse_cursor(c: &str) -> Option<(i64, i64, i64)> {
    let mut it = c.split('.').map(|p| p.parse::<i64>().ok());
    match (it.next()??, it.next()??, it.next()??, it.next()) {
        (a, b, c, None) => Some((a, b, c)),
        _ => None,
    }
}

#[utoipa::path(
    get,
    path = "/api/alerts",
    tag = "alerts",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of alerts, newest first; `next` is the cursor of the following page", body = super::openapi::AlertPage),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(st) = &q.status
        && !STATUSES.contains(&st.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "status {st:?} is not one of {}",
            STATUSES.join(", ")
        )));
    }
    let after = match &q.cursor {
        Some(c) => {
            Some(parse_cursor(c).ok_or_else(|| ApiError::BadRequest(format!("bad cursor {c:?}")))?)
        }
        None => None,
    };
    let filter = AlertFilter {
        status: q.status,
        device_id: q.device_id,
        kind: q.kind,
        limit: extract::limit(q.limit, 500, 5000)?,
        after,
        regions: actor.scope.regions(),
    };
    let (items, next) = s.store.list_alerts(&filter).await?;
    Ok(Json(json!({
        "items": items,
        "next": next.map(|(a, b, c)| format!("{a}.{b}.{c}")),
    })))
}

#[utoipa::path(
    get,
    path = "/api/alerts/{id}",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    responses(
        (status = 200, description = "The alert with its timeline, device, resident card, household devices, last position and the last day's vitals", body = super::openapi::AlertDetail),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "No such alert, or outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn get_one(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    visible(&s, &actor, id).await?;
    let (alert, timeline) = s.store.get_alert(id).await?;
    let device = s.store.get_device(&alert.device_id).await?;
    let mut v = serde_json::to_value(&alert).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["timeline"] = json!(timeline);
    v["device"] = device.unwrap_or(Value::Null);
    // The resident card, masked for roles that do not need the numbers.
    v["resident"] = match alert.resident_id.as_deref() {
        Some(r) => match s.store.get_resident(r).await? {
            Some(record) => super::residents::for_actor(&actor, &record)?,
            None => Value::Null,
        },
        None => Value::Null,
    };
    // What the operator needs in the next minute: the household's devices, where the
    // wearer last was, and the last day's vitals.
    let devices = match alert.resident_id.as_deref() {
        Some(r) => s.registry.devices_of(r),
        None => Vec::new(),
    };
    let mut ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    if !ids.contains(&alert.device_id) {
        ids.push(alert.device_id.clone());
    }
    let now = s.clock.now();
    let last_position = s
        .store
        .recent_events(&ids, "position", crate::clock::from_millis(0), 1)
        .await?;
    let vitals = s
        .store
        .recent_events(
            &ids,
            "vitals",
            now - chrono::Duration::hours(24),
            VITALS_SHOWN,
        )
        .await?;
    v["devices"] = json!(devices);
    v["last_position"] = json!(last_position.first());
    v["vitals_24h"] = json!(vitals);
    Ok(Json(v))
}

/// The most vitals readings an alert's detail shows (the last 24 h of a watch reporting every
/// 5 minutes).
const VITALS_SHOWN: i64 = 288;

/// How long an acknowledgement waits for the device's confirmation to be written.
const DOWNLINK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(
    post,
    path = "/api/alerts/{id}/ack",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    responses(
        (status = 200, description = "Claimed; an SOS also tells the device (`device_confirmation`)", body = super::openapi::Acknowledged),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such alert, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Claimed by somebody else or resolved (`status`, `holder`)", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn ack(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::handles_alerts, "claim alerts")?;
    visible(&s, &actor, id).await?;
    let alert = s.store.acknowledge(id, &actor.name, s.clock.now()).await?;
    notify(&s, &alert, "acknowledged");
    let mut body = json!(alert);
    if alert.kind == "sos" {
        // A terminal that holds its SOS flag until the platform confirms (JT/T 808) is told
        // now, so its next press is a new rising edge rather than the same held level.
        let outcome = s
            .downlinks
            .confirm_alarm(&alert.device_id, DOWNLINK_WAIT)
            .await;
        // Only devices that have such a message hear of it: a connected JT/T 808 terminal, or
        // a registered one that is offline (the operator should know it was not told).
        let jt808 = s
            .registry
            .get(&alert.device_id)
            .and_then(|r| r.family)
            .is_some_and(|f| f == "jt808");
        let relevant = match outcome {
            DownlinkOutcome::NotSupported => false,
            DownlinkOutcome::NotConnected => jt808,
            DownlinkOutcome::Sent | DownlinkOutcome::Failed(_) => true,
        };
        if relevant {
            let detail = json!({ "message": "alarm confirmation", "result": outcome.as_str() });
            if let Err(e) = s
                .store
                .note(
                    id,
                    "anxin",
                    s.clock.now(),
                    "device_confirmation",
                    &detail.to_string(),
                )
                .await
            {
                tracing::warn!(alert = id, error = %e, "Could not record the device confirmation");
            }
            body["device_confirmation"] = json!(outcome.as_str());
        }
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    /// How it ended: `false_alarm`, `resolved_by_phone`, `carer_visited`, `ambulance_called`
    /// or `other`.
    outcome: String,
    /// Free text.
    note: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/alerts/{id}/resolve",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "Resolved", body = crate::store::Alert),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such alert, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn resolve(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(body): extract::Json<ResolveBody>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::handles_alerts, "resolve alerts")?;
    visible(&s, &actor, id).await?;
    let alert = s
        .store
        .resolve(
            id,
            &actor.name,
            s.clock.now(),
            &body.outcome,
            body.note.as_deref(),
        )
        .await?;
    notify(&s, &alert, "resolved");
    Ok(Json(json!(alert)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CallBody {
    /// Whom the operator rang: `resident`, `contact1`–`contact3`, `relative`, `neighbour`,
    /// `volunteer`, `120`.
    to: String,
    /// `answered`, `no_answer`, `busy` or `wrong_number`.
    outcome: String,
    /// Free text.
    note: Option<String>,
}

/// `POST /api/alerts/{id}/calls`: a call made while handling the alert, on its timeline.
#[utoipa::path(
    post,
    path = "/api/alerts/{id}/calls",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    request_body = CallBody,
    responses(
        (status = 201, description = "The call is on the timeline", body = crate::store::Alert),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such alert, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn call(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(body): extract::Json<CallBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    actor.require(Role::handles_alerts, "record calls on alerts")?;
    visible(&s, &actor, id).await?;
    let alert = s
        .store
        .record_call(
            id,
            &actor.author(),
            s.clock.now(),
            &body.to,
            &body.outcome,
            body.note.as_deref(),
        )
        .await?;
    notify(&s, &alert, "call");
    Ok((StatusCode::CREATED, Json(json!(alert))))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoteBody {
    /// The note, up to 2 000 characters.
    text: String,
}

/// `POST /api/alerts/{id}/notes`: an operator's note on the alert's timeline.
#[utoipa::path(
    post,
    path = "/api/alerts/{id}/notes",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    request_body = NoteBody,
    responses(
        (status = 201, description = "The note is on the timeline", body = crate::store::Alert),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such alert, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn note(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(body): extract::Json<NoteBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    actor.require(Role::handles_alerts, "add notes to alerts")?;
    visible(&s, &actor, id).await?;
    let alert = s
        .store
        .add_note(id, &actor.author(), s.clock.now(), &body.text)
        .await?;
    notify(&s, &alert, "note");
    Ok((StatusCode::CREATED, Json(json!(alert))))
}

fn notify(s: &AppState, a: &crate::store::Alert, action: &str) {
    let _ = s.live.send(AlertChange {
        alert_id: a.id,
        device_id: a.device_id.clone(),
        kind: a.kind.clone(),
        severity: a.severity.clone(),
        action: action.into(),
    });
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DispatchBody {
    /// The service provider.
    provider: String,
    /// The carer sent.
    worker: String,
}

/// `POST /api/alerts/{id}/dispatch`: sends a carer; the alert becomes `dispatched` and a
/// service record is opened (201 with `record_id` and the alert).
#[utoipa::path(
    post,
    path = "/api/alerts/{id}/dispatch",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id")),
    request_body = DispatchBody,
    responses(
        (status = 201, description = "A carer is sent: the alert is `dispatched` and a service record opened", body = super::openapi::Dispatched),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such alert, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn dispatch(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    extract::Json(body): extract::Json<DispatchBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    actor.require(Role::handles_alerts, "dispatch carers")?;
    visible(&s, &actor, id).await?;
    let crew = super::providers::crew(&s, &actor, &body.provider, &body.worker).await?;
    let (alert, record_id) = s
        .store
        .dispatch(id, &actor.name, s.clock.now(), &crew)
        .await?;
    notify(&s, &alert, "dispatched");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "record_id": record_id, "alert": alert })),
    ))
}
