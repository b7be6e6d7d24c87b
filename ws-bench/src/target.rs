//! Where load goes: a `ws://` or `http://` URL on loopback, and nowhere else.
//!
//! ws-bench opens thousands of sockets as fast as it can. Pointed at a host that is not this
//! machine that is a flood, so any address outside 127.0.0.0/8 and ::1 is refused up front.
//! The `url` crate reads the URL; this file decides whether it is a place load may go.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use url::{Host, Url};

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The host as the URL names it (`127.0.0.1`, `localhost`, `[::1]`), for the Host header.
    pub host: String,
    pub addr: SocketAddr,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl Target {
    /// Parses `scheme://host[:port][/path]` and insists the host is a loopback address.
    pub fn parse(raw: &str, scheme: &str) -> Result<Target, String> {
        let url = Url::parse(raw).map_err(|e| format!("{raw:?}: not a {scheme}:// URL ({e})"))?;
        if url.scheme() != scheme {
            return Err(format!("{raw:?}: expected a {scheme}:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{raw:?}: a user name or password is not supported"));
        }
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
            Some(Host::Domain(_)) | None => {
                return Err(format!("{raw:?}: host must be an IP address or localhost"))
            }
        };
        if !ip.is_loopback() {
            return Err(format!(
                "{raw:?}: ws-bench only sends load to loopback (127.0.0.0/8, ::1), not {ip}"
            ));
        }
        // ws and http are special schemes to `url`: both have a default port (80) and a path
        // that starts with `/`.
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{raw:?}: no port"))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Target {
            host: url.host_str().unwrap_or_default().to_string(),
            addr: SocketAddr::new(ip, port),
            path,
        })
    }

    /// The `ws://` URI for a given room (or the default room). Room names are ws-bench's own
    /// (`bench-3`, `bench-s-7`): URL-safe, so they go in as they are.
    pub fn ws_uri(&self, room: Option<&str>) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        match room {
            Some(r) => format!(
                "ws://{}:{}{}{}room={}",
                self.host,
                self.addr.port(),
                self.path,
                sep,
                r
            ),
            None => format!("ws://{}:{}{}", self.host, self.addr.port(), self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let t = Target::parse("ws://127.0.0.1:8000/ws", "ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.ws_uri(Some("r1")), "ws://127.0.0.1:8000/ws?room=r1");
        assert_eq!(t.ws_uri(None), "ws://127.0.0.1:8000/ws");

        let t = Target::parse("ws://localhost:8001/ws", "ws").unwrap();
        assert_eq!(t.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(t.host, "localhost");
        let t = Target::parse("ws://[::1]:8001/ws", "ws").unwrap();
        assert_eq!(t.addr, "[::1]:8001".parse().unwrap());
        assert_eq!(t.ws_uri(None), "ws://[::1]:8001/ws");
        let t = Target::parse("http://127.0.0.2:9/metrics", "http").unwrap();
        assert_eq!(t.addr.port(), 9);
        assert_eq!(t.path, "/metrics");
    }

    #[test]
    fn defaults_and_queries() {
        let t = Target::parse("ws://127.0.0.1", "ws").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = Target::parse("ws://127.0.0.1:8000/ws?token=a", "ws").unwrap();
        assert_eq!(t.path, "/ws?token=a");
        assert_eq!(
            t.ws_uri(Some("r1")),
            "ws://127.0.0.1:8000/ws?token=a&room=r1"
        );
    }

    #[test]
    fn other_addresses_are_refused() {
        for url in [
            "ws://10.0.0.1:8000/ws",
            "ws://192.168.1.5/ws",
            "ws://8.8.8.8:80/",
            "ws://[2001:db8::1]:80/",
        ] {
            let e = Target::parse(url, "ws").unwrap_err();
            assert!(e.contains("loopback"), "{url}: {e}");
        }
        let e = Target::parse("ws://example.com/ws", "ws").unwrap_err();
        assert!(e.contains("IP address or localhost"), "{e}");
        let e = Target::parse("http://127.0.0.1/ws", "ws").unwrap_err();
        assert!(e.contains("expected a ws:// URL"), "{e}");
        for bad in [
            "127.0.0.1:8000/ws",
            "ws://127.0.0.1:99999/ws",
            "ws://u:p@127.0.0.1/ws",
        ] {
            assert!(Target::parse(bad, "ws").is_err(), "{bad}");
        }
    }
}
