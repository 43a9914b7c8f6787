//! Suppression routes: put one on, list the active ones, end one early (CONTRACT.md
//! "Residents and suppressions").

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::care::Suppression;

/// The body of `POST /api/suppressions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SuppressionBody {
    resident_id: Option<String>,
    device_id: Option<String>,
    kinds: Option<Vec<String>>,
    reason: Option<String>,
    /// Text, so that a missing, malformed or past time each get their own message.
    until: Option<String>,
}

/// `POST /api/suppressions`: 201 with the suppression and its `id`.
#[utoipa::path(
    post,
    path = "/api/suppressions",
    tag = "suppressions",
    request_body = SuppressionBody,
    responses(
        (status = 201, description = "The suppression with its id", body = crate::domain::care::Suppression),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn create(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    extract::Json(body): extract::Json<SuppressionBody>,
) -> Result<Response, ApiError> {
    let now = s.clock.now();
    let until = match body.until.as_deref() {
        None => {
            return Err(ApiError::Invalid(
                "until is mandatory: when the suppression ends, as RFC 3339 (2026-05-01T08:00:00+08:00)"
                    .into(),
            ));
        }
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| ApiError::Invalid(format!("until {text:?} is not an RFC 3339 time: {e}")))?
            .with_timezone(&Utc),
    };
    // The same kind named twice is one kind.
    let kinds = body.kinds.map(|mut k| {
        let mut seen = std::collections::HashSet::new();
        k.retain(|kind| seen.insert(kind.clone()));
        k
    });
    let mut sup = Suppression {
        id: 0,
        resident_id: body.resident_id,
        device_id: body.device_id,
        kinds,
        reason: body.reason.unwrap_or_default().trim().to_owned(),
        author: actor.author(),
        created_at: now,
        until,
        suppressed_count: 0,
    };
    let mut problems = sup.problems(now);
    // Another region's resident or device is no such thing for this caller.
    if let Some(r) = &sup.resident_id
        && (s.registry.resident(r).is_none() || !actor.sees_resident(&s.registry, Some(r)))
    {
        problems.push(format!("resident_id {r:?}: no such resident"));
    }
    if let Some(d) = &sup.device_id
        && (!s.registry.is_registered(d) || !actor.sees_device(&s.registry, d))
    {
        problems.push(format!("device_id {d:?}: no such registered device"));
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems.join("; ")));
    }
    sup.id = s.store.create_suppression(&sup).await?;
    s.registry.put_suppression(sup.clone());
    Ok((StatusCode::CREATED, Json(json!(sup))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {}

/// `GET /api/suppressions`: the active ones, by id, each with its `suppressed_count`.
#[utoipa::path(
    get,
    path = "/api/suppressions",
    tag = "suppressions",
    responses(
        (status = 200, description = "The active suppressions the caller sees", body = super::openapi::SuppressionPage)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(_): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    // From the store, not the registry: the batch commits count suppressed matches there.
    let mut items = s.store.active_suppressions(s.clock.now()).await?;
    items.retain(|sup| sees(&s, &actor, sup));
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /api/suppressions/{id}`: ends it now; 404 when unknown or no longer active.
#[utoipa::path(
    delete,
    path = "/api/suppressions/{id}",
    tag = "suppressions",
    params(("id" = i64, Path, description = "Suppression id")),
    responses(
        (status = 204, description = "Ended now"),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown, no longer active, or outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn end(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let theirs = s
        .registry
        .suppressions()
        .into_iter()
        .find(|sup| sup.id == id);
    if theirs.is_some_and(|sup| !sees(&s, &actor, &sup)) {
        return Err(crate::store::StoreError::SuppressionNotFound(id).into());
    }
    s.store
        .end_suppression(id, &actor.author(), s.clock.now())
        .await?;
    s.registry.end_suppression(id);
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the caller sees a suppression: through its resident or its device.
fn sees(s: &AppState, actor: &Actor, sup: &Suppression) -> bool {
    match (&sup.resident_id, &sup.device_id) {
        (Some(r), _) => actor.sees_resident(&s.registry, Some(r)),
        (None, Some(d)) => actor.sees_device(&s.registry, d),
        (None, None) => matches!(actor.scope, crate::domain::region::Scope::All),
    }
}
