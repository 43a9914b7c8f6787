//! The engine's broker target: `embedded`, `mqtt://` or `mqtts://` URLs with optional
//! credentials (parsed by the `url` crate, percent-decoded), and the TLS files of `[mqtt]`.
//!
//! A password never prints: [`Secret`] and [`MqttTarget`] have redacting `Debug` and
//! `Display`, and parse errors echo the input with its password masked.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use url::{Host, Url};

/// IANA "mqtt" port (RFC 6335 registry, also MQTT 5.0 §4.8 non-normative).
pub const MQTT_PORT: u16 = 1883;
/// IANA "secure-mqtt" port: MQTT over TLS.
pub const MQTTS_PORT: u16 = 8883;

/// A secret string: `Debug` and `Display` print `***`; [`Secret::expose`] is the only way to
/// the value, so every use is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The MQTT login taken from the broker URL's userinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (percent-decoded).
    pub username: String,
    /// Password (percent-decoded); MQTT allows a user name alone.
    pub password: Option<Secret>,
}

/// Where the engine's MQTT connection goes. `Debug` and `Display` both print the URL with
/// the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub enum MqttTarget {
    /// rumqttd in-process, listening on this address (MQTT 3.1.1).
    Embedded(SocketAddr),
    /// An external broker.
    External {
        /// Host name or IP address (an IPv6 address without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// `mqtts://`: TLS, the server certificate verified (`[mqtt] ca_file` or the system
        /// roots).
        tls: bool,
        /// User name and password from the URL.
        credentials: Option<Credentials>,
    },
}

impl MqttTarget {
    /// Parses `embedded`, `embedded://HOST:PORT`, `mqtt://[user[:password]@]host[:port]` or
    /// `mqtts://…` (ports default to 1883 and 8883). Userinfo is percent-decoded, so a
    /// password with `@`, `:` or `/` is written `%40`, `%3A`, `%2F`. IPv6 hosts go in
    /// brackets: `mqtt://[::1]:1883`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "embedded" {
            return Ok(MqttTarget::Embedded(SocketAddr::from((
                [127, 0, 0, 1],
                MQTT_PORT,
            ))));
        }
        if let Some(addr) = s.strip_prefix("embedded://") {
            return addr.parse().map(MqttTarget::Embedded).map_err(|_| {
                format!(
                    "{:?}: embedded://HOST:PORT needs an IP address and port (IPv6 in brackets: embedded://[::1]:1883)",
                    redact_userinfo(s)
                )
            });
        }
        let shown = redact_userinfo(s);
        let url = Url::parse(s).map_err(|e| {
            let hint = if s.contains('@') {
                "; '/', '?', '#', '%' in a user name or password must be percent-encoded (%2F, %3F, %23, %25)"
            } else {
                ""
            };
            format!("{shown:?}: not a URL ({e}){hint}; expected embedded, embedded://HOST:PORT, mqtt://[USER[:PASSWORD]@]HOST[:PORT] or mqtts://…")
        })?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" => (false, MQTT_PORT),
            "mqtts" => (true, MQTTS_PORT),
            other => {
                return Err(format!(
                    "{shown:?}: scheme {other:?} is not one of embedded, mqtt, mqtts"
                ));
            }
        };
        let host = match url.host() {
            Some(Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(Host::Ipv4(a)) => a.to_string(),
            Some(Host::Ipv6(a)) => a.to_string(),
            _ => return Err(format!("{shown:?}: no host")),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{shown:?}: a broker URL has no path, query or fragment (a '/', '?' or '#' in the password must be written %2F, %3F, %23)"
            ));
        }
        let decode = |part: &str, what: &str| -> Result<String, String> {
            percent_decode_str(part)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("{shown:?}: the {what} is not UTF-8 after percent-decoding"))
        };
        let username = decode(url.username(), "user name")?;
        let password = url.password().map(|p| decode(p, "password")).transpose()?;
        let credentials = match (username.is_empty(), password) {
            (true, None) => None,
            (true, Some(_)) => {
                return Err(format!(
                    "{shown:?}: a password needs a user name (MQTT 3.1.1 §3.1.2.9)"
                ));
            }
            (false, password) => Some(Credentials {
                username,
                password: password.map(Secret),
            }),
        };
        Ok(MqttTarget::External {
            host,
            port: url.port().unwrap_or(default_port),
            tls,
            credentials,
        })
    }

    /// `host:port` of an external broker (IPv6 in brackets), without scheme or credentials:
    /// the key under which the engine remembers having had a session there. `None` for the
    /// embedded broker, which keeps nothing across restarts.
    pub fn broker_key(&self) -> Option<String> {
        match self {
            MqttTarget::Embedded(_) => None,
            MqttTarget::External { host, port, .. } => Some(host_port(host, *port)),
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for MqttTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MqttTarget::Embedded(addr) => write!(f, "embedded://{addr}"),
            MqttTarget::External {
                host,
                port,
                tls,
                credentials,
            } => {
                f.write_str(if *tls { "mqtts://" } else { "mqtt://" })?;
                if let Some(c) = credentials {
                    f.write_str(&c.username)?;
                    if c.password.is_some() {
                        f.write_str(":***")?;
                    }
                    f.write_str("@")?;
                }
                f.write_str(&host_port(host, *port))
            }
        }
    }
}

impl fmt::Debug for MqttTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Masks the password of anything URL-shaped, even when it does not parse: everything
/// between the first `:` after `://` (or the start, without a scheme) and the last `@`
/// becomes `***`.
pub fn redact_userinfo(s: &str) -> String {
    let start = s.find("://").map(|i| i + 3).unwrap_or(0);
    match s.rfind('@') {
        Some(at) if at >= start => {
            let userinfo = &s[start..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &s[..start], &userinfo[..colon], &s[at..]),
                None => s.to_owned(),
            }
        }
        _ => s.to_owned(),
    }
}

/// TLS files of `[mqtt]` (paths relative to the config file; `ANXIN_MQTT_CA_FILE`,
/// `ANXIN_MQTT_CLIENT_CERT_FILE`, `ANXIN_MQTT_CLIENT_KEY_FILE` win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTls {
    /// PEM file of the CA certificate(s) the broker's certificate must chain to; `None`: the
    /// operating system's trust store (`rustls-native-certs`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one (`require_certificate`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
}

impl MqttTls {
    /// Whether any file is set.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(host: &str, port: u16, tls: bool, creds: Option<(&str, Option<&str>)>) -> MqttTarget {
        MqttTarget::External {
            host: host.into(),
            port,
            tls,
            credentials: creds.map(|(u, p)| Credentials {
                username: u.into(),
                password: p.map(Secret::new),
            }),
        }
    }

    #[test]
    fn plain_urls_with_and_without_port() {
        assert_eq!(
            MqttTarget::parse("mqtt://broker:1884"),
            Ok(ext("broker", 1884, false, None))
        );
        assert_eq!(
            MqttTarget::parse("mqtt://broker"),
            Ok(ext("broker", 1883, false, None))
        );
        assert_eq!(
            MqttTarget::parse("mqtt://broker/"),
            Ok(ext("broker", 1883, false, None))
        );
        assert_eq!(
            MqttTarget::parse("mqtts://broker.example"),
            Ok(ext("broker.example", 8883, true, None))
        );
        assert_eq!(
            MqttTarget::parse("mqtts://10.0.0.5:9883"),
            Ok(ext("10.0.0.5", 9883, true, None))
        );
    }

    #[test]
    fn credentials_are_percent_decoded() {
        // '@', ':', '/', '%', '?', '#' and a space in the password; '@' in the user name.
        let t =
            MqttTarget::parse("mqtts://eng%40centre:p%40ss%3Aw%2Frd%25%3F%23%20x@b:8883").unwrap();
        assert_eq!(
            t,
            ext(
                "b",
                8883,
                true,
                Some(("eng@centre", Some("p@ss:w/rd%?# x")))
            )
        );
        // Unencoded '@' and ':' inside the password still parse (the last '@' ends it).
        assert_eq!(
            MqttTarget::parse("mqtt://u:a:b@c@h"),
            Ok(ext("h", 1883, false, Some(("u", Some("a:b@c")))))
        );
        assert_eq!(
            MqttTarget::parse("mqtt://device-7@h:1"),
            Ok(ext("h", 1, false, Some(("device-7", None))))
        );
        assert_eq!(
            MqttTarget::parse("mqtt://%E5%AE%89%E5%BF%83:x@h"),
            Ok(ext("h", 1883, false, Some(("安心", Some("x")))))
        );
    }

    #[test]
    fn ipv6_hosts() {
        assert_eq!(
            MqttTarget::parse("mqtt://[::1]:1884"),
            Ok(ext("::1", 1884, false, None))
        );
        assert_eq!(
            MqttTarget::parse("mqtts://u:p@[fd00::2]"),
            Ok(ext("fd00::2", 8883, true, Some(("u", Some("p")))))
        );
        assert_eq!(
            MqttTarget::parse("embedded://[::1]:1999"),
            Ok(MqttTarget::Embedded("[::1]:1999".parse().unwrap()))
        );
        let t = MqttTarget::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!(t.to_string(), "mqtt://[::1]:1884");
        assert_eq!(t.broker_key().as_deref(), Some("[::1]:1884"));
    }

    #[test]
    fn bad_input_has_clear_errors_without_the_password() {
        let cases = [
            ("http://x", "scheme \"http\""),
            ("broker:1883", "scheme \"broker\""),
            ("mqtt://", "no host"),
            ("mqtt://:1883", "empty host"),
            ("mqtt://h:99999", "not a URL"),
            ("mqtt://h:port", "not a URL"),
            ("mqtt://h:1883/topic", "no path"),
            ("mqtt://u:s3cret@h?x=1", "no path"),
            ("mqtt://u:s3cr/et@h", "must be percent-encoded"),
            ("mqtt://:s3cret@h", "needs a user name"),
            ("mqtt://u:%FF%FEs3cret@h", "not UTF-8"),
            ("mqtt://[::1:1883", "not a URL"),
            ("embedded://localhost:1883", "IP address"),
            ("nonsense", "not a URL"),
        ];
        let mut wrong = Vec::new();
        for (input, want) in cases {
            let err = MqttTarget::parse(input).expect_err(input);
            if !err.contains(want) || err.contains("s3cr") {
                wrong.push(format!("{input}: {err}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn debug_and_display_redact_the_password() {
        let t = MqttTarget::parse("mqtts://anxin:hunter2@broker:8883").unwrap();
        assert_eq!(t.to_string(), "mqtts://anxin:***@broker:8883");
        assert_eq!(format!("{t:?}"), "mqtts://anxin:***@broker:8883");
        let MqttTarget::External { credentials, .. } = &t else {
            unreachable!()
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
        assert_eq!(
            credentials
                .as_ref()
                .unwrap()
                .password
                .as_ref()
                .unwrap()
                .expose(),
            "hunter2"
        );
        assert_eq!(
            MqttTarget::parse("embedded").unwrap().to_string(),
            "embedded://127.0.0.1:1883"
        );
        assert_eq!(t.broker_key().as_deref(), Some("broker:8883"));
        assert_eq!(MqttTarget::parse("embedded").unwrap().broker_key(), None);
    }

    #[test]
    fn redaction_of_unparsable_input() {
        assert_eq!(redact_userinfo("mqtt://u:pw@h:x"), "mqtt://u:***@h:x");
        assert_eq!(redact_userinfo("mqtt://u:p@w@h"), "mqtt://u:***@h");
        assert_eq!(redact_userinfo("mqtt://h:1"), "mqtt://h:1");
        assert_eq!(redact_userinfo("mqtt://user@h"), "mqtt://user@h");
        assert_eq!(redact_userinfo("user:pw@h"), "user:***@h");
        assert_eq!(redact_userinfo("broker:1883"), "broker:1883");
    }
}
