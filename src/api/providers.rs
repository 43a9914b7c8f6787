//! Provider and worker routes, and how a dispatch's `provider` and `worker` become a crew.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::provider::{Provider, Worker};
use crate::domain::user::Role;
use crate::store::Crew;

/// Who may add and change providers and workers: supervisors and admins.
fn manages(r: Role) -> bool {
    matches!(r, Role::Supervisor | Role::Admin)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderBody {
    name: String,
    region: String,
    phone: Option<String>,
}

/// `PUT /api/providers/{id}` (supervisors, admins): 201 created, 200 replaced; the provider's
/// region, old and new, must be the caller's.
#[utoipa::path(
    put,
    path = "/api/providers/{id}",
    tag = "providers",
    params(("id" = String, Path, description = "Provider id")),
    request_body = ProviderBody,
    responses(
        (status = 200, description = "Replaced", body = crate::domain::provider::Provider),
        (status = 201, description = "Created", body = crate::domain::provider::Provider),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such thing in the caller's regions", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn put_provider(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    extract::Json(b): extract::Json<ProviderBody>,
) -> Result<Response, ApiError> {
    actor.require(manages, "change providers")?;
    let p = Provider {
        id,
        name: b.name.trim().to_owned(),
        region: b.region,
        phone: b.phone,
    };
    let problems = p.problems();
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems.join("; ")));
    }
    if let Some(old) = s.store.get_provider(&p.id).await?
        && !actor.scope.sees(&old.region)
    {
        return Err(ApiError::NotFound(format!("provider {} not found", p.id)));
    }
    if !actor.scope.sees(&p.region) {
        return Err(crate::store::StoreError::RegionNotFound(p.region).into());
    }
    let created = s.store.put_provider(&p, s.clock.now()).await?;
    let status = super::put_status(created);
    Ok((status, Json(json!(p))).into_response())
}

/// `GET /api/providers`: the caller's regions' providers, by id.
#[utoipa::path(
    get,
    path = "/api/providers",
    tag = "providers",
    responses(
        (status = 200, description = "The providers of the caller's regions, by id", body = super::openapi::ProviderPage)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list_providers(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let items = s
        .store
        .list_providers(None, actor.scope.regions().as_deref())
        .await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /api/providers/{id}`: the provider with its workers.
#[utoipa::path(
    get,
    path = "/api/providers/{id}",
    tag = "providers",
    params(("id" = String, Path, description = "Provider id")),
    responses(
        (status = 200, description = "The provider with its `workers`", body = Object),
        (status = 404, description = "No such thing in the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn get_provider(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = visible_provider(&s, &actor, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("provider {id} not found")))?;
    let workers: Vec<Worker> = s
        .store
        .list_workers(Some(&id), None, None)
        .await?
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    let mut v = json!(p);
    v["workers"] = json!(workers);
    Ok(Json(v))
}

async fn visible_provider(
    s: &AppState,
    actor: &Actor,
    id: &str,
) -> Result<Option<Provider>, ApiError> {
    Ok(s.store
        .get_provider(id)
        .await?
        .filter(|p| actor.scope.sees(&p.region)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkerBody {
    provider_id: String,
    name: String,
    phone: Option<String>,
}

/// `PUT /api/workers/{id}` (supervisors, admins): a carer of one of the caller's providers.
#[utoipa::path(
    put,
    path = "/api/workers/{id}",
    tag = "providers",
    params(("id" = String, Path, description = "Worker id")),
    request_body = WorkerBody,
    responses(
        (status = 200, description = "Replaced", body = crate::domain::provider::Worker),
        (status = 201, description = "Created", body = crate::domain::provider::Worker),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "No such thing in the caller's regions", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn put_worker(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    extract::Json(b): extract::Json<WorkerBody>,
) -> Result<Response, ApiError> {
    actor.require(manages, "change workers")?;
    let w = Worker {
        id,
        provider_id: b.provider_id,
        name: b.name.trim().to_owned(),
        phone: b.phone,
    };
    let mut problems = w.problems();
    if visible_provider(&s, &actor, &w.provider_id)
        .await?
        .is_none()
    {
        problems.push(format!("provider_id {:?}: no such provider", w.provider_id));
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems.join("; ")));
    }
    if let Some((_, region)) = s.store.list_workers(None, Some(&w.id), None).await?.pop()
        && !actor.scope.sees(&region)
    {
        return Err(ApiError::NotFound(format!("worker {} not found", w.id)));
    }
    let created = s.store.put_worker(&w, s.clock.now()).await?;
    let status = super::put_status(created);
    Ok((status, Json(json!(w))).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkersQuery {
    /// Only this provider's workers.
    provider_id: Option<String>,
}

/// `GET /api/workers[?provider_id=]`: workers of the caller's regions' providers.
#[utoipa::path(
    get,
    path = "/api/workers",
    tag = "providers",
    params(WorkersQuery),
    responses(
        (status = 200, description = "Workers of the caller's regions' providers, by id", body = super::openapi::WorkerPage),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list_workers(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<WorkersQuery>,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Worker> = s
        .store
        .list_workers(
            q.provider_id.as_deref(),
            None,
            actor.scope.regions().as_deref(),
        )
        .await?
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// The crew a dispatch or planned visit names. A `provider` that is the id of a provider
/// record of the caller's regions links the record (its name goes on the service record),
/// and `worker` must then be one of its workers' ids or a name; a `provider` that is no
/// record's id is kept as written, with `worker`, for centres that keep no provider records.
pub(super) async fn crew(
    s: &AppState,
    actor: &Actor,
    provider: &str,
    worker: &str,
) -> Result<Crew, ApiError> {
    let Some(p) = s.store.get_provider(provider).await? else {
        return Ok(Crew::named(provider, worker));
    };
    if !actor.scope.sees(&p.region) {
        // Another region's provider is not one this caller can name.
        return Err(ApiError::Invalid(format!(
            "provider {provider:?}: no such provider"
        )));
    }
    let mut crew = Crew {
        provider: p.name,
        worker: worker.to_owned(),
        provider_id: Some(p.id),
        worker_id: None,
    };
    if let Some((w, _)) = s.store.list_workers(None, Some(worker), None).await?.pop() {
        if w.provider_id != provider {
            return Err(ApiError::Invalid(format!(
                "worker {worker:?} works for another provider, not {provider:?}"
            )));
        }
        crew.worker = w.name;
        crew.worker_id = Some(w.id);
    }
    Ok(crew)
}
