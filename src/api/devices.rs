//! Device registry routes: register (one, many, or a CSV file), list, read, replace, remove,
//! and the recent raw frames of a device for installers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Body, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::registry::{Registration, RegistrationError, parse_csv};
use crate::store::StoreError;

/// Checks CSV syntax only — UTF-8 and rows of the header's width — so a malformed file is a
/// 400 and only a well-formed one with bad values a 422.
fn csv_syntax(data: &[u8]) -> Result<(), ApiError> {
    if let Err(e) = std::str::from_utf8(data) {
        return Err(ApiError::BadRequest(format!(
            "the CSV is not UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let mut rdr = csv::ReaderBuilder::new().from_reader(data);
    let mut record = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(ApiError::BadRequest(format!("malformed CSV: {e}"))),
        }
    }
}

/// `POST /api/devices`: a JSON object, a JSON array, or `text/csv`. All or nothing: any
/// problem refuses the whole request and lists every problem with its row.
#[utoipa::path(
    post,
    path = "/api/devices",
    tag = "devices",
    request_body(
        description = "One registration or an array of them (JSON), or a CSV with a header row and one row per device",
        content((crate::registry::Registration = "application/json"), (String = "text/csv"))
    ),
    responses(
        (status = 201, description = "All registered (all or nothing)", body = super::openapi::Registered),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 415, description = "Neither JSON nor text/csv", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid registrations, every problem with its row (`problems`)", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn register(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut regs = if body.media_type == "text/csv" {
        csv_syntax(&body.bytes)?;
        parse_csv(&body.bytes).map_err(ApiError::InvalidRegistrations)?
    } else if body.is_json() {
        let v: Value = serde_json::from_slice(&body.bytes)
            .map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))?;
        let items = match v {
            Value::Array(a) => a,
            other => vec![other],
        };
        let mut regs = Vec::new();
        let mut errors = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match serde_json::from_value::<Registration>(item) {
                Ok(r) => {
                    errors.extend(r.problems(i + 1));
                    regs.push(r);
                }
                Err(e) => errors.push(RegistrationError {
                    row: i + 1,
                    field: "-".into(),
                    message: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::InvalidRegistrations(errors));
        }
        regs
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "POST /api/devices takes application/json or text/csv, not {:?}",
            body.media_type
        )));
    };
    if regs.is_empty() {
        return Err(ApiError::Invalid("no devices in the request".into()));
    }
    in_scope(&s, &actor, &regs)?;
    // Stored in seconds and read back in the largest unit: keep the registry's copy the same.
    regs.iter_mut().for_each(Registration::normalize);
    s.store.register_devices(&regs, s.clock.now()).await?;
    let n = regs.len();
    registered(&s, regs).await;
    Ok((StatusCode::CREATED, Json(json!({ "registered": n }))).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// `false`: devices heard from but not registered.
    registered: Option<bool>,
    /// The `next` of the previous page (a device id).
    cursor: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<i64>,
}

/// `GET /api/devices`: by id; `registered=false` lists devices heard from but not registered.
#[utoipa::path(
    get,
    path = "/api/devices",
    tag = "devices",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of devices by id", body = super::openapi::DevicePage),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = extract::limit(q.limit, 500, 5000)?;
    let items = s
        .store
        .list_devices(
            q.registered,
            q.cursor.as_deref(),
            limit,
            actor.scope.regions().as_deref(),
        )
        .await?;
    let next = if items.len() as i64 == limit {
        items
            .last()
            .and_then(|d| d["id"].as_str())
            .map(str::to_owned)
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next": next })))
}

/// `GET /api/devices/{id}`.
#[utoipa::path(
    get,
    path = "/api/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device: its registration and what was last heard", body = Object),
        (status = 404, description = "Not registered, or outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn get_one(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible(&s, &actor, &id)?;
    s.store
        .get_device(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::Store(crate::store::StoreError::DeviceNotFound(id)))
}

/// `PUT /api/devices/{id}`: registers or replaces the registration.
#[utoipa::path(
    put,
    path = "/api/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    request_body = crate::registry::Registration,
    responses(
        (status = 200, description = "Registered or replaced: the device", body = Object),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "Outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid registration (`problems`)", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn put(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    extract::Json(mut reg): extract::Json<Registration>,
) -> Result<Response, ApiError> {
    if reg.id.is_empty() {
        reg.id = id.clone();
    }
    if reg.id != id {
        return Err(ApiError::Invalid(format!(
            "body id {:?} differs from the path's {id:?}",
            reg.id
        )));
    }
    let problems = reg.problems(1);
    if !problems.is_empty() {
        return Err(ApiError::InvalidRegistrations(problems));
    }
    in_scope(&s, &actor, std::slice::from_ref(&reg))?;
    reg.normalize();
    s.store
        .register_devices(std::slice::from_ref(&reg), s.clock.now())
        .await?;
    registered(&s, vec![reg]).await;
    Ok(Json(s.store.get_device(&id).await?).into_response())
}

/// Devices were registered: their quarantine ends, and the `unregistered_device` alert each
/// may have is resolved by the engine. The registration itself is committed already, so a
/// failure here is logged, not answered: the alert stays for an operator to close.
async fn registered(s: &AppState, regs: Vec<Registration>) {
    let ids: Vec<String> = regs
        .iter()
        .map(|r| r.id.clone())
        .filter(|id| !s.registry.is_registered(id))
        .collect();
    // Into the registry first: a batch built from now on raises no new quarantine alert, and
    // one built just before resolves its own after commit (pipeline).
    s.registry.put(regs);
    if ids.is_empty() {
        return;
    }
    match s.store.resolve_quarantine(&ids, s.clock.now()).await {
        Ok(changes) => {
            for c in changes {
                s.live.send(c);
            }
            for id in &ids {
                s.registry.unmark_quarantined(id);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, devices = ids.len(), "Could not resolve the unregistered-device alerts of newly registered devices")
        }
    }
}

/// `DELETE /api/devices/{id}`: unregisters; the device's history stays.
#[utoipa::path(
    delete,
    path = "/api/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Unregistered; the history stays"),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "Not registered, or outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn delete(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible(&s, &actor, &id)?;
    s.store.unregister_device(&id, s.clock.now()).await?;
    s.registry.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/devices/{id}/frames`: the device's recent raw frames with their decode result.
#[utoipa::path(
    get,
    path = "/api/devices/{id}/frames",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The recent raw frames with their decode result", body = super::openapi::FramePage),
        (status = 404, description = "Outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn frames(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible(&s, &actor, &id)?;
    Ok(Json(json!({ "items": s.frames.recent(&id) })))
}

/// Refuses (404, as for a device nobody registered) a device outside the caller's regions.
fn visible(s: &AppState, actor: &Actor, id: &str) -> Result<(), ApiError> {
    if actor.sees_device(&s.registry, id) {
        Ok(())
    } else {
        Err(StoreError::DeviceNotFound(id.to_owned()).into())
    }
}

/// Refuses registrations a caller of some regions only may not write: one replacing a device
/// outside them, one pointing at a resident outside them, one pointing at no resident (the
/// device would be outside them at once).
fn in_scope(s: &AppState, actor: &Actor, regs: &[Registration]) -> Result<(), ApiError> {
    if matches!(actor.scope, crate::domain::region::Scope::All) {
        return Ok(());
    }
    for r in regs {
        if s.registry.is_registered(&r.id) && !actor.sees_device(&s.registry, &r.id) {
            return Err(StoreError::DeviceNotFound(r.id.clone()).into());
        }
        match &r.resident_id {
            Some(res) if !actor.sees_resident(&s.registry, Some(res)) => {
                return Err(ApiError::Invalid(format!(
                    "device {}: {}",
                    r.id,
                    StoreError::ResidentNotFound(res.clone())
                )));
            }
            Some(_) => {}
            None => {
                return Err(ApiError::Invalid(format!(
                    "device {}: resident_id is required of a user who works in regions",
                    r.id
                )));
            }
        }
    }
    Ok(())
}
