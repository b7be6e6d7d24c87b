//! Where load goes: a `ws://` or `http://` URL on loopback, and nowhere else.
//!
//! ws-bench opens thousands of sockets as fast as it can. Pointed at a host that is not this
//! machine that is a flood, so any address outside 127.0.0.0/8 and ::1 is refused up front.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The host as written in the URL (`127.0.0.1`, `localhost`, `[::1]`), for the Host header.
    pub host: String,
    pub addr: SocketAddr,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl Target {
    /// Parses `scheme://host[:port][/path]` and insists the host is a loopback address.
    pub fn parse(url: &str, scheme: &str) -> Result<Target, String> {
        let prefix = format!("{scheme}://");
        let rest = url
            .strip_prefix(&prefix)
            .ok_or_else(|| format!("{url:?}: expected a {scheme}:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if scheme == "ws" || scheme == "http" {
            80
        } else {
            443
        };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("{url:?}: cannot read host and port"))?;
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("{url:?}: host must be an IP address or localhost"))?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "{url:?}: ws-bench only sends load to loopback (127.0.0.0/8, ::1), not {ip}"
            ));
        }
        Ok(Target {
            host: host.to_string(),
            addr: SocketAddr::new(ip, port),
            path: path.to_string(),
        })
    }

    /// The `ws://` URI for a given room (or the default room).
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

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        let port = match &authority[end + 1..] {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((authority, default_port)),
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
        let t = Target::parse("ws://[::1]:8001/ws", "ws").unwrap();
        assert_eq!(t.addr, "[::1]:8001".parse().unwrap());
        let t = Target::parse("http://127.0.0.2:9/metrics", "http").unwrap();
        assert_eq!(t.addr.port(), 9);
        assert_eq!(t.path, "/metrics");
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
        assert!(Target::parse("ws://example.com/ws", "ws").is_err());
        assert!(Target::parse("http://127.0.0.1/ws", "ws").is_err());
    }
}
