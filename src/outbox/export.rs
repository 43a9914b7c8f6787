//! Export webhooks (`format = "export"`): the export feed (docs/EXPORT.md) pushed to an
//! endpoint page by page, in feed order. The endpoint's place is a cursor in the store,
//! moved only after a 2xx, so a page not acknowledged — the endpoint down, the engine killed —
//! is sent again, whole, until it is: at least once, in order, nothing skipped. Receivers
//! upsert each item by type and id (the same item may come twice, always newest last).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::webhook::{Attempt, HEADER_DELIVERY, Outgoing, backoff, post, sign};
use crate::clock::SharedClock;
use crate::config::notify::WebhookConfig;
use crate::store::Store;
use crate::store::export::{SETTLE, START, page_json, parse_cursor};
use crate::telemetry;

/// Items per pushed page: a few hundred kilobytes of JSON at most.
pub const PAGE_ITEMS: i64 = 200;

/// Pushes the feed to `endpoint` until `stop`; looks for new changes every `poll` when up to
/// date.
pub async fn run(
    endpoint: WebhookConfig,
    store: Store,
    clock: SharedClock,
    poll: Duration,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("anxin/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(endpoint = %endpoint.name, error = %e, "Cannot build the export HTTP client; nothing is pushed");
            return;
        }
    };
    let mut failures: i64 = 0;
    loop {
        let wait = match push_one(&client, &endpoint, &store, &clock).await {
            Pushed::Page => {
                failures = 0;
                continue;
            }
            Pushed::UpToDate => poll,
            Pushed::Failed(error, retry_after) => {
                failures += 1;
                let wait = backoff(
                    endpoint.backoff_initial_ms,
                    endpoint.backoff_max_ms,
                    failures,
                    retry_after,
                );
                telemetry::export_push_failed(
                    &endpoint.name,
                    failures,
                    &error,
                    wait.as_millis() as i64,
                );
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

enum Pushed {
    Page,
    UpToDate,
    Failed(String, Option<Duration>),
}

async fn push_one(
    client: &reqwest::Client,
    endpoint: &WebhookConfig,
    store: &Store,
    clock: &SharedClock,
) -> Pushed {
    let after = match store.export_cursor(&endpoint.name).await {
        Ok(c) => c.as_deref().and_then(parse_cursor).unwrap_or(START),
        Err(e) => return Pushed::Failed(format!("store: {e}"), None),
    };
    let now = clock.now();
    let items = match store
        .export_page(after, now - SETTLE, PAGE_ITEMS, None)
        .await
    {
        Ok(items) if items.is_empty() => return Pushed::UpToDate,
        Ok(items) => items,
        Err(e) => return Pushed::Failed(format!("store: {e}"), None),
    };
    let oldest = items.first().map_or(0, |i| i.cursor().0);
    let page = page_json(&items, after);
    let next = page["next"].as_str().unwrap_or_default().to_owned();
    let body = page.to_string();
    let ts = now.timestamp();
    let out = Outgoing {
        signature: sign(endpoint.secret.expose().as_bytes(), ts, &body),
        body,
        timestamp: ts,
    };
    // The same page carries the same id on every attempt: receivers may dedupe on it.
    let ids = [(HEADER_DELIVERY, format!("export-{}-{next}", endpoint.name))];
    match post(client, endpoint, &ids, out).await {
        Attempt::Delivered(_) => {
            if let Err(e) = store.set_export_cursor(&endpoint.name, &next, now).await {
                // Delivered but not remembered: the page goes again, which receivers absorb.
                return Pushed::Failed(format!("store: {e}"), None);
            }
            let lag = (now.timestamp_millis() - oldest).max(0) as f64 / 1000.0;
            telemetry::export_pushed(&endpoint.name, items.len(), lag);
            Pushed::Page
        }
        Attempt::Failed { error, retry_after } => Pushed::Failed(error, retry_after),
    }
}
