//! Wiring: the one place tasks are started. Start-up reads as a checklist: store, secrets,
//! HTTP listener, broker, pipeline, ingest, API; then wait for the shutdown signal and drain.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::clock::SharedClock;
use crate::config::live::Live;
use crate::config::{Loaded, MqttTarget};
use crate::feed::AlertFeed;
use crate::ingest::mqtt::MqttIngest;
use crate::ingest::session::{self, SessionWatch};
use crate::ingest::{embedded, tcp, tls};
use crate::outbox::Outbox;
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::store::Store;
use crate::telemetry::{self, names};
use tokio_util::task::TaskTracker;

/// Runs the engine until `shutdown` is cancelled, then stops intake, commits what was
/// received, sends the owed acks and returns. `http` is already bound (tests bind port 0).
pub async fn run(
    loaded: Loaded,
    clock: SharedClock,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Loaded {
        config,
        rules,
        profiles,
    } = loaded;
    // Rules and profiles: swapped as a whole on reload (SIGHUP or the API).
    let live_config = Live::new(
        rules,
        profiles,
        &config.mqtt.topic_root,
        config.file.clone(),
    );
    let metrics = telemetry::metrics_handle();

    // 1. Store: keep trying while it is unreachable; nothing can be acked without it.
    let url = config.store_url();
    let store = connect_store(&url, config.store.max_connections, &shutdown).await?;
    let Some(store) = store else { return Ok(()) };
    tracing::info!(backend = store.backend(), "Store ready");
    // The operator API's own pool: it fails fast while the pipeline's waits (Store::for_api).
    let api_store = store
        .for_api(
            &url,
            config.store.api_max_connections,
            Duration::from_millis(config.store.api_acquire_timeout_ms),
        )
        .with_context(|| format!("opening the API's pool on {}", redact(&url)))?;
    // Every series with its HELP text, at zero, before anything updates them.
    let in_force = live_config.current();
    telemetry::register_all(&telemetry::KnownLabels {
        shards: config.pipeline.shards,
        rule_alerts: in_force
            .rules
            .rules
            .iter()
            .map(|r| (r.kind.clone(), r.severity.as_str().to_owned()))
            .collect(),
        profiles: in_force
            .profiles
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    });

    // 2. The device registry, kept in memory for the hot path.
    let registry = Registry::new(config.unknown_devices);
    registry.put(
        store
            .registered_devices()
            .await
            .context("loading the device registry")?,
    );
    registry.mark_quarantined(
        store
            .quarantined_devices()
            .await
            .context("loading the quarantined devices")?,
    );
    registry.set_report_interval_defaults(config.report_intervals.clone());
    let residents = store
        .all_residents()
        .await
        .context("loading the residents")?;
    let resident_count = residents.len();
    for r in residents {
        registry.put_resident(r);
    }
    let suppressions = store
        .active_suppressions(clock.now())
        .await
        .context("loading the active suppressions")?;
    let suppression_count = suppressions.len();
    for s in suppressions {
        registry.put_suppression(s);
    }
    tracing::info!(registered = registry.len(), residents = resident_count, suppressions = suppression_count, policy = ?config.unknown_devices, "Device registry loaded");

    // 2b. Admin token.
    let token_hash = admin_token(&config.data_dir, config.admin_token.as_deref())?;

    // 3. Device listeners: bound before anything is received, so a taken port fails start-up.
    let mut tcp_listeners = Vec::new();
    for (proto, addr) in &config.tcp.listen {
        let Some(addr) = addr else { continue };
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for {} devices on {addr}; move it or turn it off with ANXIN_TCP_LISTEN={}=HOST:PORT or ={}=off",
                proto.name(),
                proto.name(),
                proto.name()
            )
        })?;
        tracing::info!(family = proto.name(), addr = %l.local_addr()?, "Device listener bound");
        tcp_listeners.push((*proto, l));
    }

    // 4. MQTT: the embedded broker first, then our client.
    let client_id = config.client_id();
    let (host, port, v5, window) = match &config.mqtt.target {
        MqttTarget::Embedded(addr) => {
            embedded::start(*addr)?;
            tracing::warn!(%addr, "Embedded MQTT broker running: it acks devices on receipt and keeps nothing on disk; use an external broker for durability");
            (addr.ip().to_string(), addr.port(), false, embedded::WINDOW)
        }
        MqttTarget::External { host, port, .. } => (
            host.clone(),
            *port,
            config.mqtt.protocol == 5,
            // A 3.1.1 broker decides the window (Mosquitto: max_inflight_messages, 20 by
            // default); size our queues for a generous one.
            if config.mqtt.protocol == 5 {
                config.mqtt.receive_maximum as usize
            } else {
                1000
            },
        ),
    };
    let tls = match &config.mqtt.target {
        MqttTarget::External { tls: true, .. } => Some(
            tls::client_config(&config.mqtt.tls).context("setting up TLS to the MQTT broker")?,
        ),
        _ => None,
    };
    // 4b. What we knew about this broker: a session we had there must still be there.
    let prior_session = match config.mqtt.target.broker_key() {
        Some(broker) => store
            .mqtt_session(&client_id, &broker)
            .await
            .context("reading the MQTT session record")?,
        None => None,
    };
    let session_watch = SessionWatch::new(&client_id, &config.mqtt.target, prior_session);
    let ingest = MqttIngest::new(
        &config.mqtt,
        live_config.filters(),
        &client_id,
        &host,
        port,
        v5,
        window,
        tls,
    )
    .with_session_watch(session_watch.clone());
    let conn = ingest.conn();
    let sink = ingest.sink();

    // 5. Pipeline.
    let live = AlertFeed::new(config.http.stream_replay_changes);
    let hard_stop = CancellationToken::new();
    let engines = crate::pipeline::engines(&store, &registry, &config.pipeline, clock.now())
        .await
        .context("loading the rules' deadlines from the store")?;
    let (pipeline, shards) = Pipeline::start(
        config.pipeline.clone(),
        ingest.window.max(64),
        store.clone(),
        live_config.clone(),
        clock.clone(),
        sink.clone(),
        live.clone(),
        config.mqtt.topic_root.clone(),
        registry.clone(),
        hard_stop.clone(),
        engines,
    );
    // 5a. The notifications outbox: delivers what the batches wrote, from the store; woken
    //     by every committed alert change.
    let outbox = Outbox::new(&config.notify);
    let outbox_task = tokio::spawn(crate::outbox::run(
        outbox.clone(),
        config.notify.clone(),
        store.clone(),
        clock.clone(),
        live.head(),
        shutdown.clone(),
    ));
    tracing::info!(endpoints = ?outbox.endpoints(), "Notifications outbox started");
    // 5b. Export webhooks: the export feed pushed to each `format = "export"` endpoint.
    let export_tasks: Vec<_> = config
        .notify
        .webhooks
        .iter()
        .filter(|w| w.format == crate::config::notify::WebhookFormat::Export)
        .map(|w| {
            tokio::spawn(crate::outbox::export::run(
                w.clone(),
                store.clone(),
                clock.clone(),
                Duration::from_millis(config.notify.poll_ms),
                shutdown.clone(),
            ))
        })
        .collect();
    let session_task = tokio::spawn(session::record(
        session_watch.clone(),
        store.clone(),
        live.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    let grace = Duration::from_secs(config.pipeline.shutdown_grace_secs);
    let depths = pipeline.clone();
    let tcp_tasks = TaskTracker::new();
    let limits = tcp::Limits {
        idle_timeout: Duration::from_secs(config.tcp.idle_timeout_secs),
        max_frames_per_sec: config.tcp.max_frames_per_sec,
        login_timeout: Duration::from_secs(config.tcp.login_timeout_secs),
        max_junk_bytes: config.tcp.max_junk_bytes,
    };
    let frames = tcp::FrameLog::default();
    let downlinks = tcp::Downlinks::default();
    let tcp_shared = tcp::TcpShared {
        registry: registry.clone(),
        frames: frames.clone(),
        downlinks: downlinks.clone(),
        gate: tcp_gate(&config, tcp_listeners.len()),
    };
    for (proto, listener) in tcp_listeners {
        tcp_tasks.spawn(tcp::serve(
            listener,
            proto,
            pipeline.clone(),
            clock.clone(),
            limits.clone(),
            tcp_shared.clone(),
            shutdown.clone(),
            tcp_tasks.clone(),
        ));
    }
    tcp_tasks.close();
    let ingest_task = tokio::spawn(ingest.run(pipeline, clock.clone(), shutdown.clone(), grace));
    tracing::info!(client_id, host, port, mqtt5 = v5, topic_root = %config.mqtt.topic_root, "MQTT ingest started");

    // 6. Upkeep: metrics histograms, gauges, expired dedup keys.
    let upkeep = {
        let (metrics, store, clock, sink, registry) = (
            metrics.clone(),
            store.clone(),
            clock.clone(),
            sink.clone(),
            registry.clone(),
        );
        let stop = shutdown.clone();
        let started_at = clock.now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                metrics.run_upkeep();
                metrics::gauge!(names::MQTT_UNACKED).set(sink.pending() as f64);
                metrics::gauge!(names::MQTT_UNACKED_PEAK).set(sink.peak() as f64);
                metrics::gauge!(names::MQTT_OLDEST_UNACKED)
                    .set(sink.oldest_age().map(|d| d.as_secs_f64()).unwrap_or(0.0));
                for (i, d) in depths.depths().into_iter().enumerate() {
                    telemetry::queue_depth(i, d);
                }
                // A suppression's end: in force to the millisecond through `covers`; recorded
                // here once, late when it ended while the engine was down.
                match store.expire_suppressions(clock.now()).await {
                    Ok(ended) => {
                        for (id, until) in ended {
                            let late = until < started_at;
                            tracing::info!(suppression = id, until = %until, late, "Suppression ended");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Recording ended suppressions failed; will retry")
                    }
                }
                n += 1;
                if n.is_multiple_of(60) {
                    // Suppressions past their end cover nothing already (Suppression::covers);
                    // dropping them keeps the registry's list to the active ones.
                    registry.prune_suppressions(clock.now());
                    if let Err(e) = store.purge_dedup(clock.now()).await {
                        tracing::warn!(error = %e, "Purging expired dedup keys failed; will retry");
                    }
                }
            }
        })
    };

    // 6a. The open-alerts gauge: one indexed query every 2 s, in a task of its own through
    //     the API's fail-fast pool, so a database outage stalls neither it nor the upkeep.
    let open_alerts = {
        let (api_store, stop) = (api_store.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(OPEN_ALERTS_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                refresh_open_alerts(&api_store).await;
            }
        })
    };

    // 6b. SIGHUP reloads rules and profiles.
    let hup = {
        let live_config = live_config.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::error!("Cannot install the SIGHUP handler; reload through the API");
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {}
                    _ = stop.cancelled() => break,
                }
                tracing::info!("SIGHUP: reloading rules and profiles");
                let l = live_config.clone();
                // Reading files blocks; keep it off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || l.reload()).await;
            }
        })
    };

    // 7. HTTP.
    let ready_conn = conn.clone();
    let filter_conn = conn.clone();
    let region_tree = crate::domain::region::RegionTree::new(api_store.all_regions().await?);
    let state = AppState {
        store: api_store.clone(),
        clock: clock.clone(),
        live: live.clone(),
        metrics,
        admin_token_sha256: token_hash,
        ingest_ready: Arc::new(move || ready_conn.is_subscribed()),
        registry,
        frames,
        config: live_config.clone(),
        downlinks,
        subscribed: Arc::new(move |f: &str| filter_conn.is_filter_subscribed(f)),
        mqtt_detail: Arc::new(move || session_watch.readyz()),
        regions: Arc::new(std::sync::RwLock::new(region_tree)),
        outbox,
    };
    let http_addr = http.local_addr()?;
    let http_stop = shutdown.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(
            http,
            api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await })
        .await
    });
    tracing::info!(%http_addr, "Operator API listening");

    // 8. Wait, then drain: intake stops, shards commit what they hold, acks go out. Shards
    //    finish once every pipeline handle is dropped: MQTT's and each connection's.
    shutdown.cancelled().await;
    // Live-feed streams never end by themselves; the HTTP server's graceful stop waits for them.
    live.close();
    let drained = tokio::time::timeout(grace + Duration::from_secs(1), async {
        tcp_tasks.wait().await;
        let _ = ingest_task.await;
        for s in shards {
            let _ = s.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "Shutdown grace ran out; uncommitted messages stay unacked and will be redelivered"
        );
        hard_stop.cancel();
    }
    upkeep.abort();
    open_alerts.abort();
    // An attempt cut short here is repeated at the next start, when its lease runs out.
    let mut outbox_task = outbox_task;
    if tokio::time::timeout(Duration::from_secs(2), &mut outbox_task)
        .await
        .is_err()
    {
        outbox_task.abort();
    }
    // A page cut short here was not acknowledged: it is sent again at the next start.
    for t in export_tasks {
        t.abort();
    }
    hup.abort();
    // The session recorder makes one last attempt at a loss not yet written.
    let mut session_task = session_task;
    if tokio::time::timeout(Duration::from_secs(2), &mut session_task)
        .await
        .is_err()
    {
        session_task.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    api_store.close().await;
    store.close().await;
    tracing::info!("Stopped");
    Ok(())
}

/// How often `anxin_alerts_open` is refreshed from the store.
const OPEN_ALERTS_EVERY: Duration = Duration::from_secs(2);

/// Sets `anxin_alerts_open{severity}` from the store; on failure the gauge keeps its value.
async fn refresh_open_alerts(store: &Store) {
    use crate::domain::alert::Severity;
    let counted = tokio::time::timeout(Duration::from_secs(2), store.open_alerts_by_rank()).await;
    match counted {
        Ok(Ok(rows)) => {
            let counts: Vec<(Severity, i64)> = rows
                .into_iter()
                .filter_map(|(rank, n)| {
                    Severity::ALL
                        .into_iter()
                        .find(|s| s.rank() == rank)
                        .map(|s| (s, n))
                })
                .collect();
            telemetry::alerts_open(&counts);
        }
        Ok(Err(e)) => telemetry::alerts_open_failed(&e),
        Err(_) => telemetry::alerts_open_failed(&crate::store::StoreError::Unanswered(
            Duration::from_secs(2),
        )),
    }
}

/// The device connection limits: the listeners' own, capped so that device connections
/// leave the open-files limit's reserve to the API, the store and the broker.
fn tcp_gate(config: &crate::config::Config, listeners: usize) -> tcp::admission::Gate {
    use tcp::admission::{Caps, Gate, descriptor_reserve, open_files_limit, total_cap};
    let configured = config.tcp.max_connections.saturating_mul(listeners.max(1));
    // The pipeline's pool and the API's own (PostgreSQL; SQLite has one connection anyway).
    let reserve =
        descriptor_reserve(config.store.max_connections + config.store.api_max_connections);
    let open_files = open_files_limit();
    let total = total_cap(configured, open_files, reserve);
    if listeners > 0 {
        telemetry::tcp_limits(total, configured, open_files, reserve);
    }
    Gate::new(Caps {
        per_listener: config.tcp.max_connections,
        total,
        per_address: config.tcp.max_connections_per_address,
    })
}

async fn connect_store(
    url: &str,
    max: u32,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match Store::connect(url, max).await {
            Ok(s) => return Ok(Some(s)),
            Err(crate::store::StoreError::Db(e)) if !matches!(e, sqlx::Error::Configuration(_)) => {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Store unreachable; retrying");
            }
            Err(e) => return Err(e).with_context(|| format!("opening the store {}", redact(url))),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The admin token's hash: from the environment, else `$data_dir/admin-token`, generated on
/// first start. Its path is printed so the operator can find it.
fn admin_token(data_dir: &Path, from_env: Option<&str>) -> anyhow::Result<[u8; 32]> {
    let token = match from_env {
        Some(t) => t.to_owned(),
        None => {
            let path = data_dir.join("admin-token");
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => {
                    tracing::info!(path = %path.display(), "Admin token reused");
                    t.trim().to_owned()
                }
                _ => {
                    std::fs::create_dir_all(data_dir)
                        .with_context(|| format!("creating {}", data_dir.display()))?;
                    let t = hex::encode(rand::random::<[u8; 24]>());
                    write_private(&path, &t)
                        .with_context(|| format!("writing {}", path.display()))?;
                    tracing::info!(path = %path.display(), "Admin token generated");
                    eprintln!("anxin: admin token written to {}", path.display());
                    t
                }
            }
        }
    };
    Ok(Sha256::digest(token.as_bytes()).into())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}
