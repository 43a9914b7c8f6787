//! Configuration routes: reload rules and profiles, list the profiles in force.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::{Actor, AppState};
use crate::domain::user::Role;

/// `POST /api/config/reload`: validates the whole configuration and swaps rules and profiles
/// (200 with what is in force), or changes nothing (422 with every problem, located).
#[utoipa::path(
    post,
    path = "/api/config/reload",
    tag = "configuration",
    responses(
        (status = 200, description = "Rules and profiles swapped: what is in force", body = Object),
        (status = 403, description = "The caller's role may not take this step", body = super::openapi::ErrorBody),
        (status = 422, description = "The configuration has problems (`problems`); nothing was changed", body = super::openapi::ErrorBody)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn reload(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Response {
    if let Err(e) = actor.require(Role::administers, "reload the configuration") {
        return e.into_response();
    }
    let live = s.config.clone();
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(report)) => Json(json!(report)).into_response(),
        Ok(Err(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the configuration has problems; nothing was changed",
                "problems": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("reload task failed: {e}") })),
        )
            .into_response(),
    }
}

/// `GET /api/profiles`: the vendor profiles in force and whether the broker acknowledged
/// each one's subscription.
#[utoipa::path(
    get,
    path = "/api/profiles",
    tag = "configuration",
    responses(
        (status = 200, description = "The vendor profiles in force and their subscriptions", body = super::openapi::ProfilePage)
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn profiles(State(s): State<AppState>) -> Json<Value> {
    let cur = s.config.current();
    let items: Vec<Value> = cur
        .profiles
        .profiles
        .iter()
        .map(|p| {
            let filter = p.topic.filter();
            json!({
                "name": p.name,
                "file": p.file.display().to_string(),
                "description": p.description,
                "topic": p.topic.text,
                "filter": filter,
                "mappings": p.mappings.len(),
                "subscribed": (s.subscribed)(&filter),
            })
        })
        .collect();
    Json(json!({ "generation": cur.generation, "items": items }))
}
