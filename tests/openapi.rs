//! The OpenAPI description against the real binary: it is served without credentials at
//! `/api/openapi.json`, every operation it describes reaches a handler (never the fallback's
//! "no route" 404 nor a 405), and exactly the operations it marks as secured refuse a request
//! without credentials. (That every route of the router is described is a unit test in
//! `src/api/openapi.rs`.)

mod common;

use common::{Engine, EngineOpts};
use serde_json::Value;

/// A value for a path parameter: any id; the handler may answer 404 for it, but with its
/// own message, not the router's.
const PARAM: &str = "0";

/// `path` with every `{name}` replaced by [`PARAM`].
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { PARAM } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_described_operation_is_routed_and_guarded_as_described() {
    let e = Engine::start(EngineOpts::default()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", e.http);

    let r = client
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the description is public");
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // The detector itself: an unrouted path gets the fallback's answer.
    let r = client
        .get(format!("{base}/api/no-such-route"))
        .bearer_auth(&e.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("no route"));

    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&m.as_str()) {
                continue;
            }
            let what = format!("{m} {path}");
            let url = format!("{base}{}", concrete(path));
            // Without credentials: 401 exactly where the description asks for them. No body,
            // so no route does anything.
            let r = client.request(m.clone(), &url).send().await.unwrap();
            let secured = op.get("security").is_some();
            assert_eq!(
                r.status() == 401,
                secured,
                "{what}: answered {} without credentials, described as {}",
                r.status(),
                if secured { "secured" } else { "public" }
            );
            // With them: a handler answers (a 404 carries the handler's own message).
            let r = client
                .request(m.clone(), &url)
                .bearer_auth(&e.token)
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert_ne!(
                status, 405,
                "{what}: method not allowed on a described route"
            );
            assert_ne!(status, 401, "{what}: refused the admin token");
            if status == 404 {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let error = body["error"].as_str().unwrap_or_default();
                assert!(
                    !error.starts_with("no route"),
                    "{what}: described but not routed ({error})"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} operations described");
}
