//! Resident routes: create or replace, read (with the devices pointing at the resident), list,
//! delete (CONTRACT.md "Residents and suppressions").

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Path, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::card::Card;
use crate::domain::care::{DEFAULT_TIME_ZONE, Resident};
use crate::store::{ResidentRecord, StoreError};

/// The body of `PUT /api/residents/{id}`. Required fields are options here so that a missing
/// one is refused with a message naming it, like an empty one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResidentBody {
    id: Option<String>,
    name: Option<String>,
    region: Option<String>,
    time_zone: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    thresholds: BTreeMap<String, f64>,
    #[serde(default)]
    card: Card,
}

/// A resident as `actor` may see it: ID-card and phone numbers masked unless its role needs
/// them.
pub(super) fn for_actor(actor: &Actor, record: &ResidentRecord) -> Result<Value, ApiError> {
    let mut v = if actor.sees_personal_numbers() {
        serde_json::to_value(record)
    } else {
        serde_json::to_value(ResidentRecord {
            card: record.card.masked(),
            ..record.clone()
        })
    }
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    v["masked"] = json!(!actor.sees_personal_numbers());
    Ok(v)
}

/// A resident as the API shows it: the stored record and the devices pointing at it.
fn shown(s: &AppState, actor: &Actor, record: &ResidentRecord) -> Result<Value, ApiError> {
    let mut v = for_actor(actor, record)?;
    v["devices"] = json!(s.registry.devices_of(&record.resident.id));
    Ok(v)
}

/// Refuses (404, as for a resident that does not exist) one outside the caller's regions.
fn visible(s: &AppState, actor: &Actor, id: &str) -> Result<(), ApiError> {
    if actor.sees_resident(&s.registry, Some(id)) {
        Ok(())
    } else {
        Err(StoreError::ResidentNotFound(id.to_owned()).into())
    }
}

/// `PUT /api/residents/{id}`: 201 when created, 200 when replaced, with the resident.
#[utoipa::path(
    put,
    path = "/api/residents/{id}",
    tag = "residents",
    params(("id" = String, Path, description = "Resident id")),
    request_body = ResidentBody,
    responses(
        (status = 200, description = "Replaced: the resident with its devices", body = super::openapi::ResidentView),
        (status = 201, description = "Created: the resident with its devices", body = super::openapi::ResidentView),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 404, description = "Outside the caller's regions, or no such region", body = super::openapi::ErrorBody),
        (status = 409, description = "Not allowed in the current state", body = super::openapi::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn put(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<ResidentBody>,
) -> Result<Response, ApiError> {
    if let Some(body_id) = &body.id
        && *body_id != id
    {
        return Err(ApiError::Invalid(format!(
            "body id {body_id:?} differs from the path's {id:?}"
        )));
    }
    let missing: Vec<&str> = [("name", &body.name), ("region", &body.region)]
        .into_iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::Invalid(format!(
            "{} required",
            match missing.as_slice() {
                [one] => format!("{one} is"),
                many => format!("{} are", many.join(" and ")),
            }
        )));
    }
    let mut resident = Resident {
        id,
        name: body.name.unwrap_or_default(),
        region: body.region.unwrap_or_default(),
        time_zone: body.time_zone.unwrap_or_else(|| DEFAULT_TIME_ZONE.into()),
        labels: body.labels,
        thresholds: body.thresholds,
    };
    let mut card = body.card;
    if let Some(n) = &mut card.id_number {
        *n = n.trim().to_ascii_uppercase();
    }
    let mut problems = resident.problems();
    problems.extend(card.problems(s.clock.now().date_naive()));
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems.join("; ")));
    }
    // An existing resident of another region is not there for this caller; a new one may be
    // placed only in the caller's regions.
    if s.registry.resident(&resident.id).is_some() {
        visible(&s, &actor, &resident.id)?;
    }
    if !actor.scope.sees(&resident.region) {
        return Err(StoreError::RegionNotFound(resident.region.clone()).into());
    }
    // What the card says is a label rules select on, without anybody writing it by hand.
    for (k, v) in card.derived_labels() {
        resident
            .labels
            .entry(k.to_owned())
            .or_insert_with(|| v.to_owned());
    }
    let created = s
        .store
        .put_resident(&resident, &card, s.clock.now())
        .await?;
    s.registry.put_resident(resident.clone());
    let record = s
        .store
        .get_resident(&resident.id)
        .await?
        .ok_or_else(|| StoreError::ResidentNotFound(resident.id.clone()))?;
    let status = super::put_status(created);
    Ok((status, Json(shown(&s, &actor, &record)?)).into_response())
}

/// `GET /api/residents/{id}`: the resident with `devices`, its registered devices.
#[utoipa::path(
    get,
    path = "/api/residents/{id}",
    tag = "residents",
    params(("id" = String, Path, description = "Resident id")),
    responses(
        (status = 200, description = "The resident with its devices; numbers masked unless the role needs them", body = super::openapi::ResidentView),
        (status = 404, description = "No such resident, or outside the caller's regions", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn get_one(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible(&s, &actor, &id)?;
    let record = s
        .store
        .get_resident(&id)
        .await?
        .ok_or(StoreError::ResidentNotFound(id))?;
    Ok(Json(shown(&s, &actor, &record)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// The `next` of the previous page (a resident id).
    cursor: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<i64>,
}

/// `GET /api/residents?limit=&cursor=`: by id, `{"items": [...], "next": cursor-or-null}`,
/// the caller's regions only.
#[utoipa::path(
    get,
    path = "/api/residents",
    tag = "residents",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of residents by id", body = super::openapi::ResidentPage),
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
    let (items, next) = s
        .store
        .list_residents(q.cursor.as_deref(), limit, actor.scope.regions().as_deref())
        .await?;
    let items = items
        .iter()
        .map(|r| for_actor(&actor, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "items": items, "next": next })))
}

/// `DELETE /api/residents/{id}`: 204; 409 while registered devices point at the resident;
/// the resident's active suppressions end with it.
#[utoipa::path(
    delete,
    path = "/api/residents/{id}",
    tag = "residents",
    params(("id" = String, Path, description = "Resident id")),
    responses(
        (status = 204, description = "Deleted; its active suppressions ended"),
        (status = 404, description = "No such resident, or outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 409, description = "Registered devices point at the resident", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn delete(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible(&s, &actor, &id)?;
    let ended = s
        .store
        .delete_resident(&id, &actor.author(), s.clock.now())
        .await?;
    s.registry.remove_resident(&id);
    for sid in ended {
        s.registry.end_suppression(sid);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportQuery {
    /// The region the new residents are placed in.
    region: String,
    /// Check and report without writing.
    #[serde(default)]
    dry_run: bool,
}

/// The largest template file `POST /api/residents/import` takes: 50 000 rows of the
/// template as CSV are about 19 MiB.
pub const IMPORT_LIMIT_BYTES: usize = 48 * 1024 * 1024;

/// `POST /api/residents/import?region=ID[&dry_run=true]` (supervisors and admins): the
/// Guangdong elder-database template as CSV (UTF-8 or GB18030) or `.xlsx`. Every row is
/// checked (domain::import); a sound row whose ID-card number a resident of another region
/// holds is rejected too (one person, one record). The sound rows are written in one
/// transaction — new ones `imported`, changed ones `updated`, identical ones `unchanged` —
/// unless `dry_run`, which reports the same without writing.
#[utoipa::path(
    post,
    path = "/api/residents/import",
    tag = "residents",
    params(ImportQuery),
    request_body(
        description = "The Guangdong elder-database template: CSV (UTF-8 or GB18030) or .xlsx",
        content(
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
        )
    ),
    responses(
        (status = 200, description = "What was (or, with `dry_run`, would be) imported, updated, unchanged and rejected", body = super::openapi::ImportReport),
        (status = 400, description = "Not a readable CSV or .xlsx template, or a bad query", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 404, description = "Region outside the caller's regions", body = super::openapi::ErrorBody),
        (status = 413, description = "Larger than the import limit of 48 MiB", body = super::openapi::ErrorBody),
        (status = 422, description = "Well-formed but invalid", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn import(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    use crate::domain::import::{Rejection, read_table, validate};
    actor.require(
        |r| {
            matches!(
                r,
                crate::domain::user::Role::Supervisor | crate::domain::user::Role::Admin
            )
        },
        "import residents",
    )?;
    if !crate::domain::region::valid_region_id(&q.region) {
        return Err(ApiError::BadRequest(format!(
            "region {:?} breaks [A-Za-z0-9_.:-]{{1,64}}",
            q.region
        )));
    }
    if !actor.scope.sees(&q.region) {
        return Err(StoreError::RegionNotFound(q.region).into());
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let started = std::time::Instant::now();
    let table = read_table(&body, content_type).map_err(|e| {
        use crate::domain::import::ImportError as E;
        match e {
            E::Empty | E::NotATable(_) | E::Xlsx(_) | E::Csv(_) | E::Encoding { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            _ => ApiError::Invalid(e.to_string()),
        }
    })?;
    let now = s.clock.now();
    let checked = validate(&table, now.date_naive());
    let mut rejected = checked.rejected;
    let numbers: Vec<String> = checked
        .rows
        .iter()
        .filter_map(|r| r.card.id_number.clone())
        .collect();
    let held = s.store.residents_by_id_numbers(&numbers).await?;
    let (mut imported, mut updated, mut unchanged) = (0usize, 0usize, 0usize);
    let mut writes: Vec<(Resident, Card)> = Vec::new();
    for row in checked.rows {
        let existing = row.card.id_number.as_ref().and_then(|n| held.get(n));
        let resident = match existing {
            Some(old) if old.resident.region != q.region => {
                rejected.push(Rejection {
                    row: row.row,
                    column: "身份证号*".into(),
                    reason: "a resident of another region already has this ID-card number \
                             (one person, one record): move that resident or correct the number"
                        .into(),
                });
                continue;
            }
            Some(old) => {
                let mut r = old.resident.clone();
                r.name = row.name.clone();
                for (k, v) in row.card.derived_labels() {
                    r.labels.entry(k.to_owned()).or_insert_with(|| v.to_owned());
                }
                if r == old.resident && row.card == old.card {
                    unchanged += 1;
                    continue;
                }
                updated += 1;
                r
            }
            None => {
                imported += 1;
                Resident {
                    // Not the ID-card number: resident ids appear in paths, logs and the
                    // audit log, where the number must never be.
                    id: format!("r-{}", hex::encode(rand::random::<[u8; 8]>())),
                    name: row.name.clone(),
                    region: q.region.clone(),
                    time_zone: DEFAULT_TIME_ZONE.into(),
                    labels: row
                        .card
                        .derived_labels()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    thresholds: BTreeMap::new(),
                }
            }
        };
        writes.push((resident, row.card));
    }
    rejected.sort_by(|a, b| (a.row, &a.column).cmp(&(b.row, &b.column)));
    if !q.dry_run && !writes.is_empty() {
        s.store.import_residents(&writes, now).await?;
        for (r, _) in writes {
            s.registry.put_resident(r);
        }
    }
    tracing::info!(
        region = %q.region,
        dry_run = q.dry_run,
        imported,
        updated,
        unchanged,
        rejected = rejected.len(),
        ms = started.elapsed().as_millis() as u64,
        "Resident import"
    );
    Ok(Json(json!({
        "imported": imported,
        "updated": updated,
        "unchanged": unchanged,
        "rejected": rejected,
        "dry_run": q.dry_run,
    })))
}
