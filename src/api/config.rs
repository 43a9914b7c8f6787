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
