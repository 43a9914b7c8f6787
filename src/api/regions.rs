//! Region routes: the tree users are assigned to (CONTRACT.md "Care records"), and the audit
//! log of every write.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::region::{Region, valid_region_id};
use crate::domain::user::Role;

/// The body of `PUT /api/regions/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RegionBody {
    /// Display name, 1..=200 characters.
    name: String,
    /// The region above, which must exist; absent for a root.
    parent: Option<String>,
}

/// `PUT /api/regions/{id}` (admins): creates (201) or replaces (200) a region under
/// `parent`, which must exist; a region may not end up below itself.
#[utoipa::path(
    put,
    path = "/api/regions/{id}",
    tag = "regions",
    params(("id" = String, Path, description = "Region id")),
    request_body = RegionBody,
    responses(
        (status = 200, description = "Replaced", body = crate::domain::region::Region),
        (status = 201, description = "Created", body = crate::domain::region::Region),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn put(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<RegionBody>,
) -> Result<Response, ApiError> {
    actor.require(Role::administers, "change regions")?;
    let mut problems = Vec::new();
    if !valid_region_id(&id) {
        problems.push(format!("id {id:?} breaks [A-Za-z0-9_.:-]{{1,64}}"));
    }
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        problems.push("name: 1..=200 characters".to_owned());
    }
    {
        let tree = s.regions.read().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &body.parent {
            if tree.get(p).is_none() {
                problems.push(format!("parent {p:?}: no such region"));
            } else if tree.would_cycle(&id, p) {
                problems.push(format!("parent {p:?} is {id:?} or below it"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems.join("; ")));
    }
    let region = Region {
        id,
        name,
        parent: body.parent,
    };
    let created = s.store.put_region(&region, s.clock.now()).await?;
    s.regions
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .put(region.clone());
    let status = super::put_status(created);
    Ok((status, Json(json!(region))).into_response())
}

/// `GET /api/regions`: the regions the caller sees (admins: all), by id.
#[utoipa::path(
    get,
    path = "/api/regions",
    tag = "regions",
    responses(
        (status = 200, description = "The regions the caller sees, by id", body = super::openapi::RegionPage)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Json<Value> {
    let mut items = s.regions.read().unwrap_or_else(|e| e.into_inner()).all();
    items.retain(|r| actor.scope.sees(&r.id));
    Json(json!({ "items": items }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Only this caller's writes.
    actor: Option<String>,
    /// Page size, 1..=1000 (default 100).
    limit: Option<i64>,
    /// The `next` of the previous page (an audit entry id).
    cursor: Option<i64>,
}

/// `GET /api/audit?actor=&limit=&cursor=` (admins): the audit log, newest first; `next` is
/// the cursor of the older page.
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "regions",
    params(AuditQuery),
    responses(
        (status = 200, description = "The audit log, newest first; `next` is the cursor of the older page", body = super::openapi::AuditPage),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn audit(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    actor.require(Role::administers, "read the audit log")?;
    let limit = extract::limit(q.limit, 100, 1000)?;
    if q.cursor.is_some_and(|c| c < 1) {
        return Err(ApiError::BadRequest("cursor: an audit entry id".into()));
    }
    let items = s
        .store
        .audit_log(q.cursor, q.actor.as_deref(), limit)
        .await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({ "items": items, "next": next })))
}
