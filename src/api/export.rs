//! `GET /api/export`: the feed a higher platform pulls (docs/EXPORT.md).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{self, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::user::Role;
use crate::store::export::{SETTLE, START, page_json, parse_cursor};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    /// The `next` of the previous page; none: from the start.
    cursor: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<i64>,
}

/// `GET /api/export?cursor=&limit=` (supervisors, admins): alerts and service records of the
/// caller's regions in the order they last changed; each item is the whole object as it is
/// now, so a consumer upserts by type and id. `next` is the cursor to pass next; a page with
/// fewer items than asked means the consumer is up to date.
#[utoipa::path(
    get,
    path = "/api/export",
    tag = "export",
    params(ExportQuery),
    responses(
        (status = 200, description = "A page of the feed (docs/EXPORT.md)", body = Object),
        (status = 400, description = "Malformed query string, path or body syntax", body = super::openapi::ErrorBody),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn feed(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ExportQuery>,
) -> Result<Json<Value>, ApiError> {
    actor.require(
        |r| matches!(r, Role::Supervisor | Role::Admin),
        "read the export feed",
    )?;
    let limit = extract::limit(q.limit, 500, 5000)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => START,
        Some(c) => parse_cursor(c).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "cursor {c:?} is not one this feed gave (time.type.id)"
            ))
        })?,
    };
    let items = s
        .store
        .export_page(
            after,
            s.clock.now() - SETTLE,
            limit,
            actor.scope.regions().as_deref(),
        )
        .await?;
    Ok(Json(page_json(&items, after)))
}
