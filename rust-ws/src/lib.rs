//! rust-ws: the lab's Rocket WebSocket server, speaking protocol v1 of PROTOCOL.md.
//!
//! Twin: python-ws/python_ws/app.py (`make_app(config)`).
//!
//! This file builds the server: [`rocket`] is the one construction path, used by the binary
//! (main.rs) and by the tests alike. Each concern has its own module, and no module uses this
//! file's items (only its re-exports), so dependencies go one way (tests/module_graph.rs). The
//! repository's README.md, "The two servers", maps every module to its python-ws twin.

use std::net::SocketAddr;
use std::sync::Arc;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::{Build, Rocket};

pub mod accept;
pub mod broker;
pub mod codeless_close;
pub mod config;
pub mod connection;
pub mod frame_walk;
pub mod healthcheck;
pub mod hub;
pub mod io_layer;
pub mod le_labels;
pub mod listen_backlog;
pub mod log;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod process_cpu;
pub mod protocol;
pub mod reclaim;
pub mod routes;
pub mod sent_counter;
pub mod server;
pub mod write_batch;

pub use config::{Config, LogLevel};
pub use metrics::Metrics;
pub use server::Server;

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
    accept::install();
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
                    "listening on http://{} (server=rust-ws profile={} backlog={} WS_MAX_MESSAGE_BYTES={} \
                     WS_SEND_QUEUE={} WS_PING_INTERVAL_SECS={} WS_PING_TIMEOUT_SECS={} \
                     WS_MAX_CONNECTIONS={} WS_HEADER_TIMEOUT_SECS={} LOG_LEVEL={} workers={} \
                     WS_NODE_ID={} WS_BROKER_URL={})",
                    SocketAddr::new(rc.address, rc.port),
                    metrics::BUILD_PROFILE,
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
