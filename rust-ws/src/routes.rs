//! The HTTP routes of PROTOCOL.md §2: the `/ws` upgrade, `/metrics`, `/healthz` and `/readyz`.
//!
//! Twin: python-ws/python_ws/routes.py.
//!
//! `/ws` answers 400 (no upgrade headers, an invalid or repeated room, HTTP/1.0, a malformed
//! `Sec-WebSocket-Key`, a body: [`UpgradeChecks`]) or 503 (at `WS_MAX_CONNECTIONS`) before the 101;
//! after it, the session belongs to connection.rs. Anything else is Rocket's 404.

use std::sync::Arc;

use rocket::fairing::AdHoc;
use rocket::http::hyper::Version;
use rocket::http::uri::Origin;
use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};
use rocket::{get, routes, Route, State};

use crate::connection::Session;
use crate::log_debug;
use crate::metrics::{self, Metrics};
use crate::protocol;
use crate::server::Server;

/// Every route, for `mount("/", ...)`.
pub fn all() -> Vec<Route> {
    routes![ws_upgrade, metrics_route, healthz, readyz]
}

/// Rocket 0.5 lets `/healthz/` match `/healthz`; the protocol's routes are exact (python-ws
/// answers 404 there too), so this request fairing sends such paths to the 404 catcher.
pub fn exact_paths() -> AdHoc {
    AdHoc::on_request("exact paths", |req, _| {
        Box::pin(async move {
            let path = req.uri().path();
            if path.len() > 1 && path.ends_with('/') {
                req.set_uri(Origin::parse("/.not-found").expect("a valid origin"));
            }
        })
    })
}

/// A 101 answer whose I/O runs a [`Session`].
pub struct Upgrade {
    accept_key: String,
    session: Session,
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

/// Why PROTOCOL.md §2 refuses an upgrade request with 400 that Rocket and rocket_ws would let
/// through, if it does: `room` more than once (Rocket's `Option<String>` quietly gives `None`,
/// the lobby), HTTP/1.0 (Rocket would send the 101, then find hyper won't upgrade), a key that is
/// not base64 of 16 bytes (rocket_ws only hashes it) and a body (Rocket reads past it and the
/// bytes after a chunked body would be taken for frames).
pub struct UpgradeChecks(Option<&'static str>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for UpgradeChecks {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(UpgradeChecks(upgrade_refusal(req)))
    }
}

fn upgrade_refusal(req: &Request<'_>) -> Option<&'static str> {
    let rooms = req
        .uri()
        .query()
        .map_or(0, |q| q.segments().filter(|(k, _)| *k == "room").count());
    if rooms > 1 {
        return Some("room given more than once");
    }
    // Put there by our patched Rocket (rust-ws/vendor/README.md); Rocket's in-memory test client
    // has no connection and so no version, hence the HTTP/1.1 default.
    if *req.local_cache(|| Version::HTTP_11) < Version::HTTP_11 {
        return Some("WebSocket needs HTTP/1.1");
    }
    let headers = req.headers();
    let mut keys = headers.get("Sec-WebSocket-Key");
    if let Some(key) = keys.next() {
        if keys.next().is_some() || !valid_key(key) {
            return Some("Sec-WebSocket-Key must be base64 of 16 bytes");
        }
    }
    if headers.contains("Transfer-Encoding") || headers.get("Content-Length").any(|v| v != "0") {
        return Some("an upgrade request has no body");
    }
    None
}

/// RFC 6455 §4.2.1: base64 (padded, canonical) of exactly 16 bytes.
fn valid_key(key: &str) -> bool {
    data_encoding::BASE64
        .decode(key.as_bytes())
        .is_ok_and(|bytes| bytes.len() == 16)
}

/// `ws::WebSocket` checks the upgrade headers (a plain GET is forwarded, ending in 400) and
/// derives the accept key. [`UpgradeChecks`], the room and the capacity are checked before the
/// 101.
#[get("/ws?<room>")]
fn ws_upgrade(
    socket: ws::WebSocket,
    checks: UpgradeChecks,
    room: Option<String>,
    server: &State<Arc<Server>>,
) -> Result<Upgrade, Status> {
    if let Some(reason) = checks.0 {
        log_debug!("upgrade refused with 400: {reason}");
        return Err(Status::BadRequest);
    }
    let room = room.unwrap_or_else(|| "lobby".to_string());
    if !protocol::valid_room(&room) {
        return Err(Status::BadRequest);
    }
    let slot = server.reserve().ok_or(Status::ServiceUnavailable)?;
    Ok(Upgrade {
        accept_key: socket.accept_key().to_string(),
        session: Session {
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

/// 200 `ready` without a broker or while it is up; 503 `broker unavailable` otherwise (§2).
#[get("/readyz")]
fn readyz(server: &State<Arc<Server>>) -> (Status, &'static str) {
    if server.ready() {
        (Status::Ok, "ready")
    } else {
        (Status::ServiceUnavailable, "broker unavailable")
    }
}

#[cfg(test)]
mod tests {
    use rocket::http::Status;
    use rocket::local::asynchronous::Client;

    use crate::{Config, LogLevel};

    /// Rocket's own in-memory client: routing and fairings without a socket. The WebSocket
    /// upgrade itself needs a real connection; tests/conformance covers it.
    async fn client() -> Client {
        let config = Config {
            host: Some("127.0.0.1".parse().unwrap()),
            port: Some(0),
            // Quiet: the liftoff fairings run here too, with no socket bound.
            log_level: LogLevel::Error,
            ..Config::default()
        };
        Client::untracked(crate::rocket(config))
            .await
            .expect("a valid rocket")
    }

    /// Rocket-specific, so not in tests/conformance: Rocket 0.5 would route a trailing slash to
    /// the route without it; the `exact_paths` fairing makes these 404 as PROTOCOL.md §2 says.
    #[rocket::async_test]
    async fn paths_are_exact() {
        let c = client().await;
        let res = c.get("/healthz").dispatch().await;
        assert_eq!(res.status(), Status::Ok);
        assert_eq!(res.into_string().await.as_deref(), Some("ok"));
        let res = c.get("/readyz").dispatch().await;
        assert_eq!(res.status(), Status::Ok);
        assert_eq!(res.into_string().await.as_deref(), Some("ready"));
        for path in ["/healthz/", "/readyz/", "/metrics/", "/ws/", "/ws/?room=a"] {
            assert_eq!(
                c.get(path).dispatch().await.status(),
                Status::NotFound,
                "{path}"
            );
        }
    }

    /// A GET of /ws without upgrade headers is forwarded by `ws::WebSocket` and ends in 400,
    /// whatever the room.
    #[rocket::async_test]
    async fn ws_without_upgrade_headers_is_400() {
        let c = client().await;
        for path in ["/ws", "/ws?room=blue", "/ws?room="] {
            assert_eq!(
                c.get(path).dispatch().await.status(),
                Status::BadRequest,
                "{path}"
            );
        }
    }
}
