//! The HTTP routes of PROTOCOL.md §2: the `/ws` upgrade, `/metrics` and `/healthz`.
//!
//! Twin: python-ws/python_ws/routes.py.
//!
//! `/ws` answers 400 (no upgrade headers, invalid room) or 503 (at `WS_MAX_CONNECTIONS`) before
//! the 101; after it, the session belongs to connection.rs. Anything else is Rocket's 404.

use std::sync::Arc;

use rocket::fairing::AdHoc;
use rocket::http::uri::Origin;
use rocket::http::Status;
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{get, routes, Route, State};

use crate::connection::Session;
use crate::metrics::{self, Metrics};
use crate::protocol;
use crate::Server;

/// Every route, for `mount("/", ...)`.
pub fn all() -> Vec<Route> {
    routes![ws_upgrade, metrics_route, healthz]
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
        for path in ["/healthz/", "/metrics/", "/ws/", "/ws/?room=a"] {
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
