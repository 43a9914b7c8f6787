//! `GET /api/export`: the feed a higher platform pulls (docs/EXPORT.md).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{self, Query};
use super::{Actor, ApiError, AppState};
use crate::domain::user::Role;
use crate::store::ExportCursor;

/// The feed's format name and version (docs/EXPORT.md); a change that is not purely additive
/// raises the version.
pub const FORMAT: &str = "anxin.export";
/// See [`FORMAT`].
pub const VERSION: u32 = 1;

/// How far behind real time the feed stays, so that a transaction that took its time before
/// the cursor passed it has committed (its rows carry the time they were computed at, not the
/// time they became visible).
pub const SETTLE: chrono::Duration = chrono::Duration::seconds(5);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    /// The `next` of the previous page; none: from the start.
    cursor: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<i64>,
}

fn parse_cursor(c: &str) -> Option<ExportCursor> {
    let mut it = c.split('.');
    let t = it.next()?.parse().ok()?;
    let k: u8 = it.next()?.parse().ok()?;
    let id = it.next()?.parse().ok()?;
    (it.next().is_none() && k <= 1).then_some((t, k, id))
}

fn cursor_text((t, k, id): ExportCursor) -> String {
    format!("{t}.{k}.{id}")
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
        None | Some("") => (i64::MIN, 0, i64::MIN),
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
    let next = items.last().map_or(after, |i| i.cursor());
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut v = json!(i);
            v["cursor"] = json!(cursor_text(i.cursor()));
            v
        })
        .collect();
    Ok(Json(json!({
        "format": FORMAT,
        "version": VERSION,
        "items": items,
        "next": if next.0 == i64::MIN { None } else { Some(cursor_text(next)) },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let c = (1_796_083_200_000, 1, 42);
        assert_eq!(parse_cursor(&cursor_text(c)), Some(c));
        for bad in ["", "1.2.3", "1.0", "a.0.1", "1.0.1.9", "-1.0.x"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }
}
