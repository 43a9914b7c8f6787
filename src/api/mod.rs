//! The operator API (axum): alerts, live feed, devices, residents, suppressions, health,
//! readiness and metrics (CONTRACT.md).

mod alerts;
mod config;
mod devices;
mod error;
mod export;
pub mod extract;
pub mod openapi;
mod outbox;
mod providers;
mod records;
mod regions;
mod reports;
mod residents;
mod suppressions;
mod users;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};

use crate::clock::SharedClock;
use crate::domain::region::{RegionTree, Scope};
use crate::domain::user::Role;
use crate::feed::{AlertFeed, Item};
use crate::ingest::tcp::FrameLog;
use crate::registry::Registry;
use crate::store::Store;
use crate::telemetry;
use extract::BODY_LIMIT_BYTES;

pub use error::ApiError;

/// Answers whether the broker acknowledged an MQTT subscription filter.
pub type SubscribedCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Answers whether the engine is ready to take traffic.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Handler state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The store, through the API's own fail-fast pool ([`Store::for_api`]).
    pub store: Store,
    /// Injected time.
    pub clock: SharedClock,
    /// Alert changes after commit, numbered for the live feed.
    pub live: AlertFeed,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// SHA-256 of the admin bearer token (the token itself is never kept).
    pub admin_token_sha256: [u8; 32],
    /// Ingest readiness (listeners bound, MQTT subscribed).
    pub ingest_ready: ReadyCheck,
    /// The in-memory device registry.
    pub registry: Registry,
    /// Recent raw frames per device.
    pub frames: FrameLog,
    /// Connected 4G devices, for messages the platform sends them.
    pub downlinks: crate::ingest::tcp::Downlinks,
    /// Rules and profiles in force; reloadable.
    pub config: Arc<crate::config::live::Live>,
    /// MQTT subscription state per filter.
    pub subscribed: SubscribedCheck,
    /// The `mqtt` detail of `/readyz` (broker session: resumed, new, lost).
    pub mqtt_detail: ReadyDetail,
    /// The region tree, loaded at start and changed by `PUT /api/regions/{id}`.
    pub regions: Arc<std::sync::RwLock<RegionTree>>,
    /// The notifications outbox: its endpoints, and a wake-up after a redrive.
    pub outbox: crate::outbox::Outbox,
}

/// Extra detail for `/readyz` that never decides readiness.
pub type ReadyDetail = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/alerts", get(alerts::list))
        .route("/api/alerts/{id}", get(alerts::get_one))
        .route("/api/alerts/{id}/ack", post(alerts::ack))
        .route("/api/alerts/{id}/resolve", post(alerts::resolve))
        .route("/api/alerts/{id}/calls", post(alerts::call))
        .route("/api/alerts/{id}/notes", post(alerts::note))
        .route("/api/alerts/{id}/dispatch", post(alerts::dispatch))
        .route("/api/records", get(records::list).post(records::plan))
        .route("/api/records/{id}", get(records::get_one))
        .route("/api/records/{id}/check-in", post(records::check_in))
        .route("/api/records/{id}/check-out", post(records::check_out))
        .route("/api/records/{id}/follow-up", post(records::follow_up))
        .route("/api/stream", get(stream))
        .route("/api/devices", get(devices::list).post(devices::register))
        .route(
            "/api/devices/{id}",
            get(devices::get_one)
                .put(devices::put)
                .delete(devices::delete),
        )
        .route("/api/devices/{id}/frames", get(devices::frames))
        .route("/api/residents", get(residents::list))
        .route(
            "/api/residents/{id}",
            get(residents::get_one)
                .put(residents::put)
                .delete(residents::delete),
        )
        .route(
            "/api/suppressions",
            get(suppressions::list).post(suppressions::create),
        )
        .route("/api/suppressions/{id}", delete(suppressions::end))
        .route("/api/config/reload", post(config::reload))
        .route("/api/users", get(users::list).post(users::create))
        .route("/api/users/{id}", axum::routing::put(users::put))
        .route("/api/profiles", get(config::profiles))
        .route("/api/regions", get(regions::list))
        .route("/api/regions/{id}", axum::routing::put(regions::put))
        .route("/api/audit", get(regions::audit))
        .route("/api/reports/monthly", get(reports::monthly))
        .route("/api/providers", get(providers::list_providers))
        .route(
            "/api/providers/{id}",
            get(providers::get_provider).put(providers::put_provider),
        )
        .route("/api/export", get(export::feed))
        .route("/api/workers", get(providers::list_workers))
        .route(
            "/api/workers/{id}",
            axum::routing::put(providers::put_worker),
        )
        .route("/api/outbox", get(outbox::list))
        .route("/api/outbox/redrive", post(outbox::redrive_all))
        .route("/api/outbox/{id}/redrive", post(outbox::redrive))
        // Every API route, whether it reads its body or not: 413 past the limit (extract.rs);
        // after authentication, so nobody unauthenticated makes us read a body.
        .route_layer(middleware::from_fn(extract::limit_body))
        .route_layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    // The template import reads files far larger than any other body.
    let import = Router::new()
        .route("/api/residents/import", post(residents::import))
        .route_layer(middleware::from_fn(|req, next| {
            extract::limit_body_to(residents::IMPORT_LIMIT_BYTES, req, next)
        }))
        .route_layer(DefaultBodyLimit::max(residents::IMPORT_LIMIT_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    // Logging in needs no credential, but the same body limits.
    let login = Router::new()
        .route("/api/login", post(users::login))
        .route_layer(middleware::from_fn(extract::limit_body))
        .route_layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit));
    Router::new()
        .merge(api)
        .merge(import)
        .merge(login)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi::document))
        .fallback(no_route)
        .with_state(state)
}

/// A `PUT`'s status: 201 when it created the thing, 200 when it replaced it.
pub(crate) fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn no_route(req: Request) -> ApiError {
    ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The name recorded on what the caller does: a user's login, or `admin` for the
    /// bootstrap token.
    pub name: String,
    /// What the caller may do.
    pub role: Role,
    /// What the caller may see and touch.
    pub scope: Scope,
}

impl Actor {
    /// Whether the caller sees the resident `id` (`None`: something of no resident, which
    /// only callers of every region see). A resident that does not exist is not seen.
    pub fn sees_resident(&self, registry: &Registry, id: Option<&str>) -> bool {
        match (&self.scope, id) {
            (Scope::All, _) => true,
            (_, None) => false,
            (scope, Some(id)) => registry.resident(id).is_some_and(|r| scope.sees(&r.region)),
        }
    }

    /// Whether the caller sees device `id`: through the resident it is assigned to.
    pub fn sees_device(&self, registry: &Registry, id: &str) -> bool {
        matches!(self.scope, Scope::All)
            || self.sees_resident(registry, registry.resident_of(id).as_deref())
    }

    /// Whether personal numbers (ID card, phones) reach this caller unmasked: supervisors
    /// and admins only (CONTRACT.md "Care records").
    pub fn sees_personal_numbers(&self) -> bool {
        matches!(self.role, Role::Supervisor | Role::Admin)
    }

    /// The name recorded as the author of what the caller does (a timeline step, a
    /// suppression).
    pub fn author(&self) -> String {
        self.name.clone()
    }

    /// Refuses (403) a step the caller's role may not take; `what` names the step.
    pub fn require(&self, allowed: fn(Role) -> bool, what: &str) -> Result<(), ApiError> {
        if allowed(self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a user with role {} may not {what}",
                self.role.as_str()
            )))
        }
    }
}

/// The cookie a console login sets; it carries the same token as the bearer header.
pub const SESSION_COOKIE: &str = "anxin_session";

/// The credential of a request: the bearer token, else the session cookie.
fn credential(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
    })
}

async fn auth(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(token) = credential(req.headers()) else {
        return ApiError::Unauthorized.into_response();
    };
    let digest = Sha256::digest(token.as_bytes());
    let actor = if digest[..] == s.admin_token_sha256[..] {
        // The bootstrap token from the data directory: the first admin, before any user
        // exists, and scripts that were given it.
        Actor {
            name: "admin".into(),
            role: Role::Admin,
            scope: Scope::All,
        }
    } else {
        match s
            .store
            .user_by_token(&hex::encode(digest), s.clock.now())
            .await
        {
            Ok(Some(user)) => {
                let role = user.role();
                // Admins run the whole centre; everybody else works the regions assigned.
                let scope = if role == Role::Admin {
                    Scope::All
                } else {
                    let tree = s.regions.read().unwrap_or_else(|e| e.into_inner());
                    Scope::Regions(Arc::new(tree.below(&user.regions)))
                };
                Actor {
                    role,
                    name: user.login,
                    scope,
                }
            }
            Ok(None) => return ApiError::Unauthorized.into_response(),
            Err(e) => return ApiError::Store(e).into_response(),
        }
    };
    req.extensions_mut().insert(actor);
    next.run(req).await
}

/// Appends every write (any method but GET, HEAD and OPTIONS) by a known caller to the audit
/// log once its answer is decided: who, their role, method, path, status, peer address. The
/// caller is the request's [`Actor`], or for a login the one the handler puts on the
/// response; an unauthenticated request wrote nothing and is not logged (a flood of them would
/// otherwise fill the log). A failed append is logged and counted, never turned into a
/// failed answer: the write it describes has already been committed.
async fn audit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let remote = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string());
    let actor = req.extensions().get::<Actor>().cloned();
    let response = next.run(req).await;
    let Some(actor) = actor.or_else(|| response.extensions().get::<Actor>().cloned()) else {
        return response;
    };
    let entry = crate::store::AuditEntry {
        id: 0,
        at: s.clock.now(),
        actor: actor.name.clone(),
        role: Some(actor.role.as_str().to_owned()),
        method: method.clone(),
        path: path.clone(),
        status: i64::from(response.status().as_u16()),
        remote,
    };
    if let Err(e) = s.store.audit(&entry).await {
        telemetry::audit_failed();
        tracing::error!(error = %e, actor = %actor.name, %method, %path, "Could not append to the audit log");
    }
    response
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the store answers and ingest is up", body = openapi::Readiness),
        (status = 503, description = "Not ready", body = openapi::Readiness)
    )
)]
async fn readyz(State(s): State<AppState>) -> Response {
    let store_ok = tokio::time::timeout(Duration::from_secs(2), s.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let ingest_ok = (s.ingest_ready)();
    let body =
        serde_json::json!({ "store": store_ok, "ingest": ingest_ok, "mqtt": (s.mqtt_detail)() });
    let code = if store_ok && ingest_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain")
    )
)]
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// `GET /api/stream`: every committed alert change as an `alert` event whose `id` is
/// `<run>-<seq>`. With `Last-Event-ID` (sent by EventSource when it reconnects) the stream
/// first replays every change after that id, exactly once, from the bounded replay ring
/// ([`crate::feed`]); an id the ring no longer reaches, or one from before a restart, gets a
/// `resync` event (reload from `GET /api/alerts`) and the stream goes on from there. Without
/// it, the first event is `ready`, carrying the id to resume from.
#[utoipa::path(
    get,
    path = "/api/stream",
    tag = "alerts",
    params(("Last-Event-ID" = Option<String>, Header, description = "The id of the last event seen (`<run>-<seq>`); EventSource sends it when it reconnects")),
    responses(
        (status = 200, description = "Server-sent events: `ready` (the id to resume from), `alert` (an alert change, JSON), `resync` (reload from `GET /api/alerts`)", body = String, content_type = "text/event-stream")
    ),
    security(("bearer" = []), ("session" = []))
)]
async fn stream(
    State(s): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reader = s.live.reader(last.as_deref());
    let feed = s.live.clone();
    let registry = s.registry.clone();
    let guard = ClientGauge::new();
    let events =
        futures_util::stream::unfold((reader, guard, last), move |(mut reader, guard, last)| {
            let feed = feed.clone();
            let registry = registry.clone();
            let actor = actor.clone();
            async move {
                let event = loop {
                    break match reader.next().await? {
                        Item::Ready(seq) => SseEvent::default()
                            .event("ready")
                            .id(feed.event_id(seq))
                            .data(format!("{{\"replay\":{}}}", feed.capacity())),
                        Item::Resync(reason, seq) => {
                            telemetry::stream_resync(reason, last.as_deref());
                            SseEvent::default()
                                .event("resync")
                                .id(feed.event_id(seq))
                                .data(format!("{{\"reason\":\"{}\"}}", reason.as_str()))
                        }
                        // Another region's alert is not there for this caller at all.
                        Item::Change(n) if !sees_change(&actor, &registry, &n.change) => continue,
                        Item::Change(n) => SseEvent::default()
                            .event("alert")
                            .id(feed.event_id(n.seq))
                            .json_data(&*n.change)
                            .unwrap_or_else(|_| SseEvent::default().event("error")),
                    };
                };
                Some((Ok(event), (reader, guard, last)))
            }
        });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Whether the caller may see an alert change: through the alert's device, or the resident
/// of a household alert (`r/<resident>`).
fn sees_change(actor: &Actor, registry: &Registry, c: &crate::store::AlertChange) -> bool {
    match c.device_id.strip_prefix("r/") {
        Some(resident) if registry.resident(resident).is_some() => {
            actor.sees_resident(registry, Some(resident))
        }
        _ => actor.sees_device(registry, &c.device_id),
    }
}

/// Counts a live-feed client for as long as its stream exists.
struct ClientGauge;

impl ClientGauge {
    fn new() -> ClientGauge {
        telemetry::stream_clients(1.0);
        ClientGauge
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        telemetry::stream_clients(-1.0);
    }
}
