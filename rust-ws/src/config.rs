//! Configuration from the environment, exactly as PROTOCOL.md §1 lists it.
//!
//! Twin: python-ws/python_ws/config.py.
//!
//! Parsing takes a lookup function instead of reading `std::env` directly, so unit tests can feed
//! it any environment without touching the process's own (tests run in parallel).

use std::fmt;
use std::net::IpAddr;

/// Log verbosity from `LOG_LEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

/// The server's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to bind. `None` means "leave it to Rocket": `WS_HOST` was unset but
    /// `ROCKET_ADDRESS` was set, and `WS_*` only wins when it is set itself.
    pub host: Option<IpAddr>,
    /// Port to bind; `None` as for `host`, with `ROCKET_PORT`.
    pub port: Option<u16>,
    pub max_message_bytes: usize,
    pub send_queue: usize,
    /// 0 disables keepalive pings.
    pub ping_interval_secs: u64,
    pub ping_timeout_secs: u64,
    /// 0 means unlimited.
    pub max_connections: usize,
    /// How long a connection has to send its request headers (PROTOCOL.md §2, Request deadline).
    pub header_timeout_secs: u64,
    pub log_level: LogLevel,
    /// `WS_BROKER_URL`: `None` is one node, exactly as without §5 (PROTOCOL.md §1).
    pub broker_url: Option<BrokerUrl>,
    /// `WS_NODE_ID`, or the host name and pid (PROTOCOL.md §1).
    pub node_id: String,
}

/// A valid `WS_BROKER_URL`, split into what a Redis connection needs. `Debug` and `Display` show
/// the redacted form, so the password cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The URL as given, its password shown as `***`.
    pub redacted: String,
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.redacted)
    }
}

/// What the one error line says an invalid value should have been (the same words as
/// python-ws's config.py).
pub const BROKER_URL_ALLOWED: &str = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://..., \
     with PORT 1-65535, DB an integer >= 0 and no query or fragment";
pub const NODE_ID_ALLOWED: &str = "1-32 characters of A-Z a-z 0-9 _ . -";

/// `raw` with any password shown as `***`, whether or not it parses.
///
/// The user information runs from after `scheme://` to the last `@` (a careless password may hold
/// another `@`); with a colon, what follows it is the password, and without one the whole of it
/// may be (the old `redis://PASSWORD@HOST` form), so all of it goes.
pub fn redact_url(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |i| i + 3);
    match raw.rfind('@') {
        Some(at) if at >= start => {
            let userinfo = &raw[start..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{}{}{}", &raw[..start], shown, &raw[at..])
        }
        _ => raw.to_string(),
    }
}

fn node_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// A valid `WS_NODE_ID`: 1-32 characters of `[A-Za-z0-9_.-]`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(node_id_char)
}

/// The default node id: the host name's first 20 characters, any character outside
/// `[A-Za-z0-9_.-]` replaced by `-`, then `-` and the process id.
pub fn default_node_id(host_name: &str, pid: u32) -> String {
    let host: String = host_name
        .chars()
        .take(20)
        .map(|c| {
            if c.is_ascii() && node_id_char(c as u8) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{pid}")
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `%XX` decoded, as URL user information is (redis-rs and redis-py both decode it); a `%` not
/// followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `WS_BROKER_URL` as PROTOCOL.md §1 allows it; the error carries the redacted value.
pub fn parse_broker_url(raw: &str) -> Result<BrokerUrl, ConfigError> {
    let redacted = redact_url(raw);
    let bad = || ConfigError {
        var: "WS_BROKER_URL",
        value: redacted.clone(),
        allowed: BROKER_URL_ALLOWED,
    };
    let (scheme, rest) = raw.split_once("://").ok_or_else(bad)?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" => false,
        "rediss" => true,
        _ => return Err(bad()),
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(bad());
    }
    let (mut authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let (mut username, mut password) = (None, None);
    if let Some((userinfo, host_port)) = authority.rsplit_once('@') {
        authority = host_port;
        let (user, secret) = userinfo.split_once(':').ok_or_else(bad)?;
        if secret.is_empty() {
            return Err(bad());
        }
        username = Some(percent_decode(user)).filter(|u| !u.is_empty());
        password = Some(percent_decode(secret));
    }
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() || !host.bytes().all(node_id_char) {
            return Err(bad());
        }
        (host, port)
    };
    let port = match port_text {
        None => 6379,
        Some(p) if digits(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => n as u16,
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    let db = match path {
        None | Some("") => 0,
        Some(p) if digits(p) => p.parse::<i64>().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
    };
    Ok(BrokerUrl {
        tls,
        host: host.to_string(),
        port,
        db,
        username,
        password,
        redacted,
    })
}

pub const DEFAULT_PORT: u16 = 8000;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: Some(IpAddr::from([0, 0, 0, 0])),
            port: Some(DEFAULT_PORT),
            max_message_bytes: 65536,
            send_queue: 1024,
            ping_interval_secs: 20,
            ping_timeout_secs: 20,
            max_connections: 0,
            header_timeout_secs: 10,
            log_level: LogLevel::Info,
            broker_url: None,
            node_id: default_node_id(&host_name(), std::process::id()),
        }
    }
}

/// An invalid variable: its name, its value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config error: {}={:?} is not {}",
            self.var, self.value, self.allowed
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`; an empty value counts as unset.
    pub fn from_lookup<F>(lookup: F) -> Result<Config, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let defaults = Config::default();

        let host = match get("WS_HOST") {
            Some(v) => Some(v.parse::<IpAddr>().map_err(|_| ConfigError {
                var: "WS_HOST",
                value: v.clone(),
                allowed: "an IP address",
            })?),
            // ROCKET_ADDRESS keeps working when WS_HOST is not set; otherwise bind 0.0.0.0 in
            // every profile (Rocket's release profile alone would pick 127.0.0.1).
            None if get("ROCKET_ADDRESS").is_some() => None,
            None => defaults.host,
        };
        let port = match get("WS_PORT") {
            Some(v) => Some(int(&v, "WS_PORT", 0, 65535, "an integer from 0 to 65535")? as u16),
            None if get("ROCKET_PORT").is_some() => None,
            None => defaults.port,
        };

        let num =
            |var: &'static str, default: u64, min: u64, max: u64, allowed: &'static str| match get(
                var,
            ) {
                Some(v) => int(&v, var, min, max, allowed),
                None => Ok(default),
            };

        let max_message_bytes = num(
            "WS_MAX_MESSAGE_BYTES",
            defaults.max_message_bytes as u64,
            1,
            67_108_864,
            "an integer from 1 to 67108864",
        )? as usize;
        let send_queue = num(
            "WS_SEND_QUEUE",
            defaults.send_queue as u64,
            1,
            1_048_576,
            "an integer from 1 to 1048576",
        )? as usize;
        let ping_interval_secs = num(
            "WS_PING_INTERVAL_SECS",
            defaults.ping_interval_secs,
            0,
            3600,
            "an integer from 0 to 3600",
        )?;
        let ping_timeout_secs = num(
            "WS_PING_TIMEOUT_SECS",
            defaults.ping_timeout_secs,
            1,
            3600,
            "an integer from 1 to 3600",
        )?;
        let max_connections = num(
            "WS_MAX_CONNECTIONS",
            0,
            0,
            usize::MAX as u64,
            "an integer >= 0 (0 = unlimited)",
        )? as usize;
        let header_timeout_secs = num(
            "WS_HEADER_TIMEOUT_SECS",
            defaults.header_timeout_secs,
            1,
            3600,
            "an integer from 1 to 3600",
        )?;

        let log_level = match get("LOG_LEVEL") {
            None => defaults.log_level,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warning" | "warn" => LogLevel::Warning,
                "error" => LogLevel::Error,
                _ => {
                    return Err(ConfigError {
                        var: "LOG_LEVEL",
                        value: v,
                        allowed: "one of debug, info, warning, error",
                    })
                }
            },
        };

        let broker_url = get("WS_BROKER_URL")
            .map(|v| parse_broker_url(&v))
            .transpose()?;
        let node_id = match get("WS_NODE_ID") {
            None => defaults.node_id,
            Some(v) if valid_node_id(&v) => v,
            Some(v) => {
                return Err(ConfigError {
                    var: "WS_NODE_ID",
                    value: v,
                    allowed: NODE_ID_ALLOWED,
                })
            }
        };

        Ok(Config {
            host,
            port,
            max_message_bytes,
            send_queue,
            ping_interval_secs,
            ping_timeout_secs,
            max_connections,
            header_timeout_secs,
            log_level,
            broker_url,
            node_id,
        })
    }
}

/// Parses a decimal integer in `min..=max`; digits only, so signs, spaces and fractions fail.
fn int(
    value: &str,
    var: &'static str,
    min: u64,
    max: u64,
    allowed: &'static str,
) -> Result<u64, ConfigError> {
    let err = || ConfigError {
        var,
        value: value.to_string(),
        allowed,
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_bind_all_interfaces_on_8000() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.host, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(c.port, Some(8000));
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.send_queue, 1024);
        assert_eq!((c.ping_interval_secs, c.ping_timeout_secs), (20, 20));
        assert_eq!(c.max_connections, 0);
        assert_eq!(c.log_level, LogLevel::Info);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = parse(&[("WS_PORT", ""), ("WS_HOST", ""), ("LOG_LEVEL", "")]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn ws_vars_win_over_rocket_vars_and_rocket_vars_still_work() {
        let both = parse(&[
            ("WS_HOST", "127.0.0.1"),
            ("ROCKET_ADDRESS", "10.0.0.1"),
            ("WS_PORT", "9001"),
            ("ROCKET_PORT", "9002"),
        ])
        .unwrap();
        assert_eq!(both.host, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(both.port, Some(9001));

        let rocket_only =
            parse(&[("ROCKET_ADDRESS", "127.0.0.2"), ("ROCKET_PORT", "9002")]).unwrap();
        assert_eq!(rocket_only.host, None);
        assert_eq!(rocket_only.port, None);
    }

    #[test]
    fn accepts_bounds() {
        let c = parse(&[
            ("WS_HOST", "::1"),
            ("WS_PORT", "0"),
            ("WS_MAX_MESSAGE_BYTES", "67108864"),
            ("WS_SEND_QUEUE", "1"),
            ("WS_PING_INTERVAL_SECS", "0"),
            ("WS_PING_TIMEOUT_SECS", "3600"),
            ("WS_MAX_CONNECTIONS", "10"),
            ("LOG_LEVEL", "WARN"),
        ])
        .unwrap();
        assert_eq!(c.port, Some(0));
        assert_eq!(c.max_message_bytes, 67_108_864);
        assert_eq!(c.send_queue, 1);
        assert_eq!(c.ping_interval_secs, 0);
        assert_eq!(c.ping_timeout_secs, 3600);
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.log_level, LogLevel::Warning);
        assert_eq!(
            parse(&[("LOG_LEVEL", "Debug")]).unwrap().log_level,
            LogLevel::Debug
        );
        assert_eq!(
            parse(&[("LOG_LEVEL", "ERROR")]).unwrap().log_level,
            LogLevel::Error
        );
    }

    #[test]
    fn rejects_invalid_values_naming_the_variable() {
        let cases = [
            ("WS_HOST", "localhost"),
            ("WS_PORT", "abc"),
            ("WS_PORT", "65536"),
            ("WS_PORT", "-1"),
            ("WS_PORT", " 80"),
            ("WS_MAX_MESSAGE_BYTES", "0"),
            ("WS_MAX_MESSAGE_BYTES", "67108865"),
            ("WS_SEND_QUEUE", "0"),
            ("WS_SEND_QUEUE", "1048577"),
            ("WS_PING_INTERVAL_SECS", "3601"),
            ("WS_PING_INTERVAL_SECS", "1.5"),
            ("WS_PING_TIMEOUT_SECS", "0"),
            ("WS_MAX_CONNECTIONS", "-5"),
            ("WS_MAX_CONNECTIONS", "+5"),
            ("LOG_LEVEL", "verbose"),
        ];
        for (var, value) in cases {
            let err = parse(&[(var, value)]).expect_err(var);
            assert_eq!(err.var, var);
            assert_eq!(err.value, value);
            let line = err.to_string();
            assert!(line.starts_with(&format!("config error: {var}=")), "{line}");
            assert!(!line.contains('\n'));
        }
        assert_eq!(
            parse(&[("WS_PORT", "abc")]).unwrap_err().to_string(),
            r#"config error: WS_PORT="abc" is not an integer from 0 to 65535"#
        );
    }
}

#[cfg(test)]
mod broker_tests {
    use super::*;

    fn url(raw: &str) -> BrokerUrl {
        parse_broker_url(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn broker_urls_parse_with_their_defaults() {
        let u = url("redis://redis");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (false, "redis", 6379, 0)
        );
        assert_eq!((u.username, u.password), (None, None));
        let u = url("rediss://ann:s%40cret@cache.example-1.net:6380/3");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (true, "cache.example-1.net", 6380, 3)
        );
        assert_eq!(u.username.as_deref(), Some("ann"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        let u = url("REDIS://:pw@[::1]:7000/");
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 7000, 0));
        assert_eq!((u.username, u.password.as_deref()), (None, Some("pw")));
        // The last `@` ends the user information.
        assert_eq!(url("redis://:a@b@h").password.as_deref(), Some("a@b"));
    }

    #[test]
    fn invalid_broker_urls_are_config_errors_without_the_password() {
        for raw in [
            "http://h",
            "redis:/h",
            "redis://",
            "redis://:6379",
            "redis://h:0",
            "redis://h:65536",
            "redis://h:x",
            "redis://h/-1",
            "redis://h/db",
            "redis://h?db=1",
            "redis://h#x",
            "redis://user@h",
            "redis://user:@h",
            "redis://h_o st",
            "redis://[::1",
            "redis://[nothost]:1",
            "redis://:hunter2@h:99999",
            "redis://:hunter2@h/x?y",
        ] {
            let err = parse_broker_url(raw).expect_err(raw);
            let line = err.to_string();
            assert_eq!(err.var, "WS_BROKER_URL");
            assert!(!line.contains("hunter2"), "{line}");
            assert!(!line.contains('\n'));
        }
        assert_eq!(
            Config::from_lookup(|n| (n == "WS_BROKER_URL").then(|| "redis://:hunter2@h:0".into()))
                .unwrap_err()
                .to_string(),
            format!("config error: WS_BROKER_URL=\"redis://:***@h:0\" is not {BROKER_URL_ALLOWED}")
        );
    }

    #[test]
    fn redaction_hides_every_password_form() {
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("redis://ann:pw@h"), "redis://ann:***@h");
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
        assert_eq!(redact_url("redis://:p:w@x@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("nonsense:pw@h"), "nonsense:***@h");
        let u = url("redis://ann:pw@h");
        assert_eq!(u.to_string(), "redis://ann:***@h");
        assert!(!format!("{u:?}").contains("pw@"));
    }

    #[test]
    fn node_ids() {
        let get = |v: &'static str| {
            Config::from_lookup(move |n| (n == "WS_NODE_ID").then(|| v.to_string()))
        };
        assert_eq!(get("web-1.a_b").unwrap().node_id, "web-1.a_b");
        assert_eq!(get(&"x".repeat(32).leak()[..]).unwrap().node_id.len(), 32);
        for bad in ["a:b", "a b", "é", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"] {
            let err = get(bad).expect_err(bad);
            assert_eq!(err.var, "WS_NODE_ID");
            assert_eq!(
                err.to_string(),
                format!("config error: WS_NODE_ID={bad:?} is not {NODE_ID_ALLOWED}")
            );
        }
        assert_eq!(default_node_id("web.example.com", 42), "web.example.com-42");
        assert_eq!(default_node_id("a b:c/é", 7), "a-b-c---7");
        assert_eq!(
            default_node_id("abcdefghijklmnopqrstuvwxyz", 1),
            "abcdefghijklmnopqrst-1"
        );
        let d = Config::default().node_id;
        assert!(valid_node_id(&d), "{d}");
        assert!(d.ends_with(&format!("-{}", std::process::id())));
    }
}
