//! rust-ws: the lab's Rocket WebSocket server, speaking protocol v1 of PROTOCOL.md.
//!
//! [`rocket`] is the one construction path, used by the binary and by the tests alike.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::http::Status;
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{get, routes, Build, Rocket, State};

pub mod close_fix;
pub mod config;
pub mod conn;
pub mod hub;
pub mod metrics;
pub mod protocol;

pub use config::{Config, LogLevel};
pub use metrics::Metrics;

use hub::Hub;

// ---- logging -------------------------------------------------------------------------------
// Rocket's logger filters by Rocket's own level, which is kept "off" unless LOG_LEVEL=debug
// (Rocket at "normal" logs every request). Our few lines go straight to stderr instead.

static LOG_LEVEL: AtomicU8 = AtomicU8::new(1);

pub fn set_log_level(level: LogLevel) {
    LOG_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn log_enabled(level: LogLevel) -> bool {
    level as u8 >= LOG_LEVEL.load(Ordering::Relaxed)
}

#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log_enabled($crate::LogLevel::Debug) {
            eprintln!("DEBUG rust-ws: {}", format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        if $crate::log_enabled($crate::LogLevel::Warning) {
            eprintln!("WARNING rust-ws: {}", format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        if $crate::log_enabled($crate::LogLevel::Info) {
            eprintln!("INFO rust-ws: {}", format_args!($($arg)*));
        }
    };
}

// ---- shared state --------------------------------------------------------------------------

/// State shared by every route and connection of one server instance.
pub struct Server {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub hub: Hub,
    /// Connections open or being upgraded; what WS_MAX_CONNECTIONS limits.
    open: AtomicUsize,
}

impl Server {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Server {
        Server {
            hub: Hub::new(config.send_queue),
            config,
            metrics,
            open: AtomicUsize::new(0),
        }
    }

    /// Reserves a connection slot, or `None` at WS_MAX_CONNECTIONS. The check and the increment
    /// are one atomic step, so concurrent upgrades cannot overshoot the limit.
    fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
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

// ---- routes --------------------------------------------------------------------------------

/// A 101 answer whose I/O runs a [`conn::Session`].
pub struct Upgrade {
    accept_key: String,
    session: conn::Session,
}

impl<'r> Responder<'r, 'static> for Upgrade {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        Response::build()
            .raw_header("Sec-WebSocket-Version", "13")
            .raw_header("Sec-WebSocket-Accept", self.accept_key)
            .upgrade("websocket", self.session)
            .ok()
    }
}

/// `ws::WebSocket` checks the upgrade headers (a plain GET is forwarded, ending in 400) and
/// derives the accept key. The room and the capacity are checked before the 101.
#[get("/ws?<room>")]
fn ws_upgrade(
    socket: ws::WebSocket,
    room: Option<String>,
    server: &State<Arc<Server>>,
) -> Result<Upgrade, Status> {
    let room = room.unwrap_or_else(|| "lobby".to_string());
    if !protocol::valid_room(&room) {
        return Err(Status::BadRequest);
    }
    let slot = server.reserve().ok_or(Status::ServiceUnavailable)?;
    Ok(Upgrade {
        accept_key: socket.accept_key().to_string(),
        session: conn::Session {
            server: Arc::clone(server),
            room: room.into_boxed_str(),
            slot,
        },
    })
}

/// The Prometheus text exposition with its exact content type.
pub struct Exposition(String);

impl<'r> Responder<'r, 'static> for Exposition {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        Response::build()
            .raw_header("Content-Type", metrics::CONTENT_TYPE)
            .sized_body(self.0.len(), std::io::Cursor::new(self.0))
            .ok()
    }
}

#[get("/metrics")]
fn metrics_route(metrics: &State<Arc<Metrics>>) -> Exposition {
    Exposition(metrics.render())
}

#[get("/healthz")]
fn healthz() -> &'static str {
    "ok"
}

// ---- construction --------------------------------------------------------------------------

/// Rocket's configuration: ROCKET_* from the environment, then our WS_* values on top.
pub fn figment(config: &Config) -> Figment {
    let mut figment = rocket::Config::figment()
        .merge(("cli_colors", false))
        // Connection tasks close with 1001 within ~2.5 s; Rocket's own grace + mercy bound the
        // rest so the process exits within ~5 s of SIGTERM.
        .merge(("shutdown.grace", 2))
        .merge(("shutdown.mercy", 1));
    if let Some(host) = config.host {
        figment = figment.merge(("address", host.to_string()));
    }
    if let Some(port) = config.port {
        figment = figment.merge(("port", port));
    }
    if std::env::var_os("ROCKET_LOG_LEVEL").is_none() {
        // Rocket at "normal" logs each request, and even at "critical" it prints its own launch
        // banner. Launch failures come back from `launch()` and are printed by main, so outside
        // debug Rocket stays quiet and the start-up line above is the only one.
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
    set_log_level(config.log_level);
    let metrics = Arc::new(Metrics::new());
    let server = Arc::new(Server::new(config.clone(), metrics.clone()));
    let on_shutdown = server.clone();

    rocket::custom(figment(&config))
        .manage(metrics)
        .manage(server)
        .mount("/", routes![ws_upgrade, metrics_route, healthz])
        .attach(AdHoc::on_request("exact paths", |req, _| {
            Box::pin(async move {
                // Rocket 0.5 lets `/healthz/` match `/healthz`; the protocol's routes are exact
                // (python-ws answers 404 there too), so send such paths to the 404 catcher.
                let path = req.uri().path();
                if path.len() > 1 && path.ends_with('/') {
                    req.set_uri(rocket::http::uri::Origin::parse("/.not-found").unwrap());
                }
            })
        }))
        .attach(AdHoc::on_liftoff("start-up line", move |rocket| {
            Box::pin(async move {
                let rc = rocket.config();
                let bound = SocketAddr::new(rc.address, rc.port);
                if raise_listen_backlog(bound) == 0 {
                    log_warn!("could not raise the listen backlog to {LISTEN_BACKLOG}");
                }
                log_info!(
                    "listening on http://{} (server=rust-ws backlog={} WS_MAX_MESSAGE_BYTES={} \
                     WS_SEND_QUEUE={} WS_PING_INTERVAL_SECS={} WS_PING_TIMEOUT_SECS={} \
                     WS_MAX_CONNECTIONS={} LOG_LEVEL={} workers={})",
                    bound,
                    LISTEN_BACKLOG,
                    config.max_message_bytes,
                    config.send_queue,
                    config.ping_interval_secs,
                    config.ping_timeout_secs,
                    config.max_connections,
                    config.log_level.as_str(),
                    rc.workers,
                );
            })
        }))
        .attach(AdHoc::on_shutdown(
            "close WebSockets with 1001",
            move |_| {
                Box::pin(async move {
                    // Detached connection tasks don't see Rocket's shutdown: tell each one.
                    on_shutdown.hub.shutdown();
                })
            },
        ))
}

// ---- listen backlog ------------------------------------------------------------------------

/// The listen backlog PROTOCOL.md §1 asks of both servers.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Raises the backlog of Rocket's listening socket on `addr` to [`LISTEN_BACKLOG`]; returns how
/// many sockets were changed (1 when it worked).
///
/// Rocket 0.5 binds with `tokio::net::TcpListener::bind` and offers no backlog setting. tokio
/// used to pass 1024, but since mio 1.1 (tokio >= 1.48 needs mio >= 1.2) it passes std's 128,
/// which overflows under connection bursts. On Linux, `listen()` on a socket that is already
/// listening just updates its backlog, so after Rocket has bound we find its socket among our
/// own file descriptors by local address and call `listen(1024)` again. An accepted connection
/// shares that local address, but `listen()` fails on it harmlessly (EINVAL).
#[cfg(target_os = "linux")]
pub fn raise_listen_backlog(addr: SocketAddr) -> usize {
    use std::os::fd::{BorrowedFd, RawFd};

    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut raised = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is open (listed in /proc/self/fd) and only borrowed for the
        // getsockname/listen calls below; nothing here closes it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let bound_here = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a == addr);
        if bound_here
            && sock.r#type().ok() == Some(socket2::Type::STREAM)
            && sock.listen(LISTEN_BACKLOG).is_ok()
        {
            raised += 1;
        }
    }
    raised
}

#[cfg(not(target_os = "linux"))]
pub fn raise_listen_backlog(_addr: SocketAddr) -> usize {
    0
}

// ---- health check --------------------------------------------------------------------------

/// `GET http://127.0.0.1:{port}/healthz`; true on a 200. The container has no curl.
pub fn healthcheck(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // Only the status line matters; read at most a few KiB.
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&buf[..len]);
    let mut parts = status_line.split_whitespace();
    matches!(
        (parts.next(), parts.next()),
        (Some(v), Some("200")) if v.starts_with("HTTP/1.")
    )
}

/// The port `--healthcheck` should probe: WS_PORT, else ROCKET_PORT, else 8000.
pub fn healthcheck_port() -> Option<u16> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match get("WS_PORT").or_else(|| get("ROCKET_PORT")) {
        Some(v) => v.parse().ok(),
        None => Some(config::DEFAULT_PORT),
    }
}
