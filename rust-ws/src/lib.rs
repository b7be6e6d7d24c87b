//! rust-ws: the lab's Rocket WebSocket server, speaking protocol v1 of PROTOCOL.md.
//!
//! Twin: python-ws/python_ws/app.py (`make_app(config)`).
//!
//! This file builds the server and holds the state it manages: [`rocket`] is the one construction
//! path, used by the binary (main.rs) and by the tests alike, and [`Server`] is what every route
//! and connection shares. Each other concern has its own module:
//!
//! | module | job |
//! |---|---|
//! | `config` | `WS_*`/`LOG_LEVEL` parsing and ranges (exit 2 lives in main.rs) |
//! | `routes` | `/ws` upgrade checks (400: room, HTTP/1.0, key, body; 503: capacity), `/metrics`, `/healthz`, `/readyz` |
//! | `connection` | one session: read loop, writer, keepalive, `Ending` |
//! | `hub` | rooms, membership, fan-out, outboxes, eviction, shutdown kill |
//! | `broker` | with `WS_BROKER_URL`: the Redis publisher/subscriber of §5 and its up/down cycle |
//! | `protocol` | parse, validate, serialise, error details |
//! | `metrics` | the metric families and their rendering |
//! | `healthcheck` | the `--healthcheck` client |
//! | `log` | the log level and macros; Rocket's accept errors as one warning per 10 s |
//! | `listen_backlog` | workaround: Rocket/mio listen with 128, PROTOCOL.md asks 1024 |
//! | `codeless_close` | workaround: tungstenite's close echo (code-less → 1000, refused codes counted, 1014 echoed) |
//! | `sent_counter` | `ws_messages_sent_total`, counted as frames reach the socket |
//! | `write_batch` | coalesced writes: a batch of frames per socket write, one pending pong at most |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::{Build, Rocket};

pub mod broker;
pub mod codeless_close;
pub mod config;
pub mod connection;
pub mod healthcheck;
pub mod hub;
pub mod listen_backlog;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod reclaim;
pub mod routes;
pub mod sent_counter;
pub mod write_batch;

pub use config::{Config, LogLevel};
pub use metrics::Metrics;

use broker::Broker;
use hub::Hub;

/// State shared by every route and connection of one server instance.
pub struct Server {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    /// `Some` with `WS_BROKER_URL`: broadcasts go through Redis (PROTOCOL.md §5).
    pub broker: Option<Arc<Broker>>,
    /// Connections open or being upgraded; what WS_MAX_CONNECTIONS limits.
    open: AtomicUsize,
}

impl Server {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Server {
        let broker_kind = if config.broker_url.is_some() {
            "redis"
        } else {
            "none"
        };
        metrics.set_node_info(&config.node_id, broker_kind);
        let (hub, broker) = match &config.broker_url {
            None => (Arc::new(Hub::new(config.send_queue)), None),
            Some(url) => {
                let hub = Arc::new(Hub::with_node(config.send_queue, &config.node_id));
                let broker = Broker::new(url.clone(), hub.clone(), metrics.clone());
                (hub, Some(Arc::new(broker)))
            }
        };
        Server {
            hub,
            broker,
            config,
            metrics,
            open: AtomicUsize::new(0),
        }
    }

    /// Reserves a connection slot, or `None` at WS_MAX_CONNECTIONS. The check and the increment
    /// are one atomic step, so concurrent upgrades cannot overshoot the limit.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    /// `/readyz`: no broker, or its connections up and subscribed.
    pub fn ready(&self) -> bool {
        self.broker.as_ref().is_none_or(|b| b.is_up())
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits (bounded) until every connection task has finished its closing handshake.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.open_connections() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// One reserved connection slot; released on drop, including when an upgrade never completes.
pub struct Slot(Arc<Server>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Rocket's configuration: ROCKET_* from the environment, then our WS_* values on top.
pub fn figment(config: &Config) -> Figment {
    let mut figment = rocket::Config::figment()
        .merge(("cli_colors", false))
        // Connection tasks close with 1001 within ~2.5 s; Rocket's own grace + mercy bound the
        // rest so the process exits within ~5 s of SIGTERM.
        .merge(("shutdown.grace", 2))
        .merge(("shutdown.mercy", 1))
        // Read by our patched Rocket (rust-ws/vendor/README.md): hyper's header read timeout,
        // PROTOCOL.md §2's request deadline.
        .merge(("wslab_header_read_timeout", config.header_timeout_secs));
    if let Some(host) = config.host {
        figment = figment.merge(("address", host.to_string()));
    }
    if let Some(port) = config.port {
        figment = figment.merge(("port", port));
    }
    if std::env::var_os("ROCKET_LOG_LEVEL").is_none() {
        // Rocket at "normal" logs each request, and even at "critical" it prints its own launch
        // banner. Launch failures come back from `launch()` and are printed by main, so outside
        // debug Rocket stays quiet and our start-up line is the only one.
        let rocket_level = match config.log_level {
            LogLevel::Debug => "normal",
            _ => "off",
        };
        figment = figment.merge(("log_level", rocket_level));
    }
    figment
}

/// Builds the server: routes, state (`Arc<Metrics>`, `Arc<Server>`) and fairings.
pub fn rocket(config: Config) -> Rocket<Build> {
    // Before Rocket's own logger can take the slot (at ignite).
    log::install_log_bridge();
    log::set_level(config.log_level);
    let metrics = Arc::new(Metrics::new());
    let server = Arc::new(Server::new(config.clone(), metrics.clone()));
    let on_shutdown = server.clone();
    let broker = server.broker.clone();

    rocket::custom(figment(&config))
        .manage(metrics)
        .manage(server)
        .mount("/", routes::all())
        .attach(routes::exact_paths())
        // Before the start-up line, which reports the backlog: liftoff fairings start in attach
        // order, and this one finishes without awaiting.
        .attach(listen_backlog::fairing())
        .attach(AdHoc::on_liftoff("start-up line", move |rocket| {
            Box::pin(async move {
                let rc = rocket.config();
                let broker_url = config
                    .broker_url
                    .as_ref()
                    .map_or("none".to_string(), |u| u.to_string());
                log_info!(
                    "listening on http://{} (server=rust-ws backlog={} WS_MAX_MESSAGE_BYTES={} \
                     WS_SEND_QUEUE={} WS_PING_INTERVAL_SECS={} WS_PING_TIMEOUT_SECS={} \
                     WS_MAX_CONNECTIONS={} WS_HEADER_TIMEOUT_SECS={} LOG_LEVEL={} workers={} \
                     WS_NODE_ID={} WS_BROKER_URL={})",
                    SocketAddr::new(rc.address, rc.port),
                    listen_backlog::LISTEN_BACKLOG,
                    config.max_message_bytes,
                    config.send_queue,
                    config.ping_interval_secs,
                    config.ping_timeout_secs,
                    config.max_connections,
                    config.header_timeout_secs,
                    config.log_level.as_str(),
                    rc.workers,
                    config.node_id,
                    broker_url,
                );
                // After the start-up line, so "broker up" follows it; the node serves local
                // work whether or not Redis is there yet (PROTOCOL.md §5).
                if let Some(broker) = broker {
                    tokio::spawn(broker.run());
                }
            })
        }))
        .attach(AdHoc::on_shutdown(
            "close WebSockets with 1001",
            move |_| {
                Box::pin(async move {
                    // Detached connection tasks don't see Rocket's shutdown: tell each one.
                    on_shutdown.hub.shutdown();
                    if let Some(broker) = &on_shutdown.broker {
                        broker.shutdown();
                    }
                })
            },
        ))
}
