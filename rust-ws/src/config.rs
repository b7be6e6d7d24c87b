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
