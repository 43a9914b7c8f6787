//! The OpenAPI description of the whole HTTP API, generated from the handlers' `#[utoipa::path]`
//! attributes and the schemas derived on the types they take and return, and served at
//! `GET /api/openapi.json` (public: it describes the API and holds no data). A unit test below
//! checks that the description and the router in `mod.rs` name the same routes, and
//! `tests/openapi.rs` that every described operation reaches a handler of the real binary.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{
    alerts, config, devices, export, outbox, providers, records, regions, reports, residents,
    suppressions, users,
};
use crate::domain::care::Suppression;
use crate::domain::import::Rejection;
use crate::domain::region::Region;
use crate::store::{Alert, AuditEntry, ResidentRecord, ServiceRecord, TimelineEntry, User};

/// The OpenAPI document: every route of [`super::router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "anxin operator API",
        description = "Alerts, care records, devices, residents and operations of the anxin \
                       telecare engine (README \"HTTP API\", docs/CONTRACT.md). Every error is \
                       `{\"error\": \"…\"}` with one status per kind of failure."
    ),
    paths(
        alerts::list,
        alerts::get_one,
        alerts::ack,
        alerts::resolve,
        alerts::call,
        alerts::note,
        alerts::dispatch,
        records::list,
        records::plan,
        records::get_one,
        records::check_in,
        records::check_out,
        records::follow_up,
        super::stream,
        devices::list,
        devices::register,
        devices::get_one,
        devices::put,
        devices::delete,
        devices::frames,
        residents::list,
        residents::get_one,
        residents::put,
        residents::delete,
        residents::import,
        suppressions::list,
        suppressions::create,
        suppressions::end,
        config::reload,
        config::profiles,
        users::list,
        users::create,
        users::put,
        users::login,
        regions::list,
        regions::put,
        regions::audit,
        reports::monthly,
        providers::list_providers,
        providers::get_provider,
        providers::put_provider,
        providers::list_workers,
        providers::put_worker,
        export::feed,
        outbox::list,
        outbox::redrive,
        outbox::redrive_all,
        healthz,
        super::readyz,
        super::metrics,
        document,
    ),
    modifiers(&Common),
    tags(
        (name = "alerts", description = "Alerts, their timeline and the live feed"),
        (name = "records", description = "Service records: visits, check-in, check-out, follow-up"),
        (name = "devices", description = "The device registry"),
        (name = "residents", description = "Residents, their cards and the template import"),
        (name = "suppressions", description = "Operators' \"do not alert\""),
        (name = "configuration", description = "Rules and vendor profiles"),
        (name = "users", description = "Users and logins"),
        (name = "regions", description = "The region tree and the audit log"),
        (name = "reports", description = "Monthly figures"),
        (name = "providers", description = "Service providers and their workers"),
        (name = "export", description = "The export feed for higher platforms (docs/EXPORT.md)"),
        (name = "outbox", description = "Notification deliveries (webhooks) and dead letters"),
        (name = "operations", description = "Health, readiness, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// The document as served, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"the OpenAPI document: {e}\"}}"))
});

/// `GET /api/openapi.json`: this API's OpenAPI description.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
pub async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// `GET /healthz`, a closure in the router: described here.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up: `ok`", body = String, content_type = "text/plain"))
)]
#[allow(dead_code)]
fn healthz() {}

/// What every operation has in common, added to each rather than written on each: the
/// security schemes, and the error answers any authenticated route can give.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`: the admin bootstrap token, or a \
                         token from `POST /api/login`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::SESSION_COOKIE,
                "The console's session cookie, set by `POST /api/login` (same token)",
            ))),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ] {
                let Some(op) = op else { continue };
                op.operation_id = Some(operation_id(method, path));
                if op.security.is_none() {
                    continue;
                }
                let responses = &mut op.responses.responses;
                for (code, text) in [
                    ("401", "No or wrong credentials"),
                    ("413", "The body is over the limit of 2 MiB"),
                    ("503", "The store is unavailable"),
                ] {
                    responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(text).into());
                }
            }
        }
    }
}

/// A unique operation id from the method and path (the handlers' names repeat across
/// resources): `GET /api/alerts/{id}` is `get_alerts_by_id`.
fn operation_id(method: &str, path: &str) -> String {
    let words = path
        .trim_start_matches("/api")
        .split(['/', '.', '-'])
        .filter(|w| !w.is_empty())
        .map(
            |w| match w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                Some(param) => format!("by_{param}"),
                None => w.to_owned(),
            },
        );
    std::iter::once(method.to_owned())
        .chain(words)
        .collect::<Vec<_>>()
        .join("_")
}

/// Every error answer: `{"error": "…"}`, plus what some errors add (README "HTTP errors").
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// What went wrong, in English.
    pub error: String,
    /// Every problem, located: invalid device registrations (objects with `row`, `field`,
    /// `message`) or a configuration that does not load (strings).
    #[schema(value_type = Option<Vec<Object>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<serde_json::Value>>,
    /// 409 on an alert: its status now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// 409 on an alert: who holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// A page of alerts.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AlertPage {
    /// The alerts.
    pub items: Vec<Alert>,
    /// The cursor of the next page, `null` on the last.
    pub next: Option<String>,
}

/// An alert with what the operator needs in the next minute.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AlertDetail {
    /// The alert.
    #[serde(flatten)]
    pub alert: Alert,
    /// What happened to it, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// The device that raised it, `null` when unknown.
    #[schema(value_type = Option<Object>)]
    pub device: Option<serde_json::Value>,
    /// The resident's card, masked unless the role needs the numbers.
    pub resident: Option<ResidentView>,
    /// The household's devices.
    #[schema(value_type = Vec<Object>)]
    pub devices: Vec<serde_json::Value>,
    /// Where the wearer last was.
    #[schema(value_type = Option<Object>)]
    pub last_position: Option<serde_json::Value>,
    /// The last day's vitals readings.
    #[schema(value_type = Vec<Object>)]
    pub vitals_24h: Vec<serde_json::Value>,
}

/// A claimed alert.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Acknowledged {
    /// The alert.
    #[serde(flatten)]
    pub alert: Alert,
    /// For an SOS of a device that has such a message: whether it was told (`sent`,
    /// `not_connected`, `failed: …`).
    pub device_confirmation: Option<String>,
}

/// A carer sent.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Dispatched {
    /// The service record opened.
    pub record_id: i64,
    /// The alert, now `dispatched`.
    pub alert: Alert,
}

/// A page of service records.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RecordPage {
    /// The records.
    pub items: Vec<ServiceRecord>,
    /// The cursor of the next page, `null` on the last.
    pub next: Option<i64>,
}

/// How many devices were registered.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Registered {
    /// Devices registered.
    pub registered: usize,
}

/// A page of devices.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DevicePage {
    /// The devices: registration and what was last heard.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// The cursor of the next page, `null` on the last.
    pub next: Option<String>,
}

/// A device's recent raw frames.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FramePage {
    /// The frames with their decode result, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

/// A resident as the API shows it.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ResidentView {
    /// The stored resident and card.
    #[serde(flatten)]
    pub record: ResidentRecord,
    /// Whether ID-card and phone numbers are masked for the caller.
    pub masked: bool,
    /// The registered devices pointing at the resident (not in lists).
    #[schema(value_type = Option<Vec<Object>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<serde_json::Value>>,
}

/// A page of residents.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ResidentPage {
    /// The residents.
    pub items: Vec<ResidentView>,
    /// The cursor of the next page, `null` on the last.
    pub next: Option<String>,
}

/// What a template import did.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ImportReport {
    /// New residents.
    pub imported: usize,
    /// Residents changed.
    pub updated: usize,
    /// Residents already as the file says.
    pub unchanged: usize,
    /// Every problem, by row and column.
    pub rejected: Vec<Rejection>,
    /// Whether nothing was written.
    pub dry_run: bool,
}

/// The active suppressions.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SuppressionPage {
    /// The suppressions.
    pub items: Vec<Suppression>,
}

/// One vendor profile in force.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProfileInfo {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// What it is for.
    pub description: Option<String>,
    /// The topic pattern.
    pub topic: String,
    /// The MQTT subscription filter.
    pub filter: String,
    /// How many mappings it has.
    pub mappings: usize,
    /// Whether the broker acknowledged the subscription.
    pub subscribed: bool,
}

/// The vendor profiles in force.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProfilePage {
    /// The configuration's generation (increases on each reload).
    pub generation: u64,
    /// The profiles.
    pub items: Vec<ProfileInfo>,
}

/// Every user.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct UserPage {
    /// The users.
    pub items: Vec<User>,
}

/// A login.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct LoggedIn {
    /// The bearer token.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// Who logged in.
    pub user: User,
}

/// The regions the caller sees.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RegionPage {
    /// The regions.
    pub items: Vec<Region>,
}

/// The providers the caller sees.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProviderPage {
    /// The providers.
    pub items: Vec<crate::domain::provider::Provider>,
}

/// The workers the caller sees.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct WorkerPage {
    /// The workers.
    pub items: Vec<crate::domain::provider::Worker>,
}

/// A page of notification deliveries.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DeliveryPage {
    /// The deliveries, oldest first.
    pub items: Vec<crate::store::Delivery>,
    /// The cursor of the next page, `null` on the last.
    pub next: Option<i64>,
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AuditPage {
    /// The entries, newest first.
    pub items: Vec<AuditEntry>,
    /// The cursor of the older page, `null` on the last.
    pub next: Option<i64>,
}

/// `/readyz`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// The store answers.
    pub store: bool,
    /// Listeners bound and MQTT subscribed.
    pub ingest: bool,
    /// The broker session (resumed, new, lost); never decides readiness.
    #[schema(value_type = Object)]
    pub mqtt: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::OpenApi;

    use super::ApiDoc;

    /// The methods a route may have.
    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    /// Routes that answer without credentials (outside the `auth` layer in mod.rs).
    const PUBLIC: [&str; 5] = [
        "/api/login",
        "/api/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ];

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    /// Every `(method, path)` of the document.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in METHODS {
                if item.get(m).is_some() {
                    ops.insert((m.to_owned(), path.clone()));
                }
            }
        }
        ops
    }

    /// The text of a call's arguments: from just after its `(` to the matching `)`.
    fn arguments(text: &str) -> &str {
        let mut depth = 1;
        let mut in_string = false;
        for (i, c) in text.char_indices() {
            match c {
                '"' => in_string = !in_string,
                '(' if !in_string => depth += 1,
                ')' if !in_string => {
                    depth -= 1;
                    if depth == 0 {
                        return &text[..i];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses in the router: {text}")
    }

    /// Every `(method, path)` the router routes, read from the source of `router` in mod.rs:
    /// each `.route(` call's path, and the method functions of its method router (`get(…)`,
    /// `.post(…)`, `axum::routing::put(…)`). Anything else that adds routes is refused, so a
    /// route cannot be added in a way this test does not see.
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let start = src
            .find("pub fn router(")
            .expect("`pub fn router(` in mod.rs");
        let body = &src[start..];
        let body = &body[..body.find("\n}\n").expect("the end of `router`")];
        for other in [
            ".nest(",
            ".nest_service(",
            ".route_service(",
            ".fallback_service(",
        ] {
            assert!(
                !body.contains(other),
                "the router uses `{other}`: teach this test to read it"
            );
        }
        let mut ops = BTreeSet::new();
        for (at, _) in body.match_indices(".route(") {
            let args = arguments(&body[at + ".route(".len()..]);
            let open = args.find('"').expect("a route's path literal");
            let close = open + 1 + args[open + 1..].find('"').unwrap();
            let path = &args[open + 1..close];
            let rest = &args[close + 1..];
            let mut methods = 0;
            // Words followed by `(`: `get(alerts::list)` gives `get(alerts`, whose `get` is a
            // method; `alerts::list` itself is not followed by one.
            let words = rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '('));
            for word in words {
                let Some((name, _)) = word.split_once('(') else {
                    continue;
                };
                if METHODS.contains(&name) {
                    ops.insert((name.to_owned(), path.to_owned()));
                    methods += 1;
                } else if name == "any" || name == "on" || name.ends_with("_service") {
                    panic!("route {path} uses `{name}(`: teach this test to read it");
                }
            }
            assert!(methods > 0, "route {path}: no method found in {rest:?}");
        }
        assert!(ops.len() > 20, "too few routes read from mod.rs: {ops:?}");
        ops
    }

    #[test]
    fn the_document_and_the_router_name_the_same_routes() {
        let doc = document();
        let documented = documented(&doc);
        let routed = routed();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routed but not in the OpenAPI document (add #[utoipa::path] and list it in \
             ApiDoc): {undocumented:?}; in the document but not routed: {unrouted:?}"
        );
    }

    /// Every `$ref` in `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_described_whole() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for (method, path) in documented(&doc) {
            let op = &doc["paths"][&path][&method];
            let what = format!("{} {path}", method.to_uppercase());
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{what}: no tag"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{what}: no success answer"
            );
            // Every error answer is the shared body.
            for (code, r) in responses {
                if code.starts_with('4') || (code.starts_with('5') && path != "/readyz") {
                    let schema = &r["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{what}: answer {code} is not an ErrorBody"
                    );
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(
                    p["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{what}: parameter {} has no description",
                    p["name"]
                );
            }
            // Every `{name}` of the path is a described path parameter.
            let params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(params, in_path, "{what}: path parameters");
            // Credentials: public routes take none, every other one the bearer or the cookie.
            let secured = op.get("security").is_some();
            assert_eq!(
                secured,
                !PUBLIC.contains(&path.as_str()),
                "{what}: security"
            );
            if secured {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}, {"session": []}])
                );
                assert!(responses.contains_key("401"), "{what}: no 401");
            }
        }
        let mut ids = BTreeSet::new();
        for (method, path) in documented(&doc) {
            let id = doc["paths"][&path][&method]["operationId"]
                .as_str()
                .unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} repeats");
        }
        assert!(ids.contains("get_alerts_by_id") && ids.contains("post_records_by_id_check_in"));
        for scheme in ["bearer", "session"] {
            assert!(doc["components"]["securitySchemes"][scheme].is_object());
        }
        // Every schema named is defined.
        let mut named = Vec::new();
        refs(&doc, &mut named);
        for r in named {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is not defined"
            );
        }
    }
}
