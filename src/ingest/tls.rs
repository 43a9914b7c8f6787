//! TLS towards an `mqtts://` broker: a rustls client configuration on the ring provider
//! (PITFALLS 12: never aws-lc-rs), the broker's certificate verified against `[mqtt] ca_file`
//! or, without one, the operating system's trust store (`rustls-native-certs`), and an
//! optional client certificate for brokers that require one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::MqttTls;

/// Why the TLS configuration could not be built; each names the setting and file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting} {}: cannot read: {source}", path.display())]
    Read {
        /// Which setting named it.
        setting: Setting,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not PEM, or holds nothing of the expected kind.
    #[error("{setting} {}: {problem}", path.display())]
    Pem {
        /// Which setting named it.
        setting: Setting,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Only one of client certificate and key is set.
    #[error("client_cert_file and client_key_file go together; only {0} is set")]
    HalfClientAuth(Setting),
    /// No CA file and no usable certificate in the system trust store.
    #[error(
        "no ca_file is set and the system trust store has no usable CA certificate ({0}); install the ca-certificates package or set [mqtt] ca_file / ANXIN_MQTT_CA_FILE"
    )]
    NoSystemRoots(String),
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("{0}")]
    Rustls(String),
}

/// A TLS setting of `[mqtt]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `ca_file`.
    CaFile,
    /// `client_cert_file`.
    ClientCert,
    /// `client_key_file`.
    ClientKey,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

impl Setting {
    /// The `[mqtt]` key.
    pub fn key(self) -> &'static str {
        match self {
            Setting::CaFile => "ca_file",
            Setting::ClientCert => "client_cert_file",
            Setting::ClientKey => "client_key_file",
        }
    }

    /// The environment variable that overrides it.
    pub fn env(self) -> &'static str {
        match self {
            Setting::CaFile => "ANXIN_MQTT_CA_FILE",
            Setting::ClientCert => "ANXIN_MQTT_CLIENT_CERT_FILE",
            Setting::ClientKey => "ANXIN_MQTT_CLIENT_KEY_FILE",
        }
    }
}

impl TlsError {
    /// (environment variable, `[mqtt]` key) of the setting at fault, for the problem report.
    pub fn setting(&self) -> (&'static str, &'static str) {
        match self {
            TlsError::Read { setting, .. }
            | TlsError::Pem { setting, .. }
            | TlsError::HalfClientAuth(setting) => (setting.env(), setting.key()),
            TlsError::NoSystemRoots(_) => (Setting::CaFile.env(), Setting::CaFile.key()),
            TlsError::Rustls(_) => (Setting::ClientCert.env(), Setting::ClientCert.key()),
        }
    }
}

/// Builds the client configuration for an `mqtts://` broker from the `[mqtt]` TLS files.
pub fn client_config(tls: &MqttTls) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &tls.ca_file {
        Some(path) => ca_roots(path)?,
        None => system_roots()?,
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(TlsError::HalfClientAuth(Setting::ClientCert)),
        (None, Some(_)) => return Err(TlsError::HalfClientAuth(Setting::ClientKey)),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, Setting::ClientCert)?;
            let bytes = read(key, Setting::ClientKey)?;
            let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
                setting: Setting::ClientKey,
                path: key.clone(),
                problem: match e {
                    rustls::pki_types::pem::Error::NoItemsFound => {
                        "no private key in it (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
                    }
                    e => format!("not a valid PEM private key: {e}"),
                },
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsError::Rustls(format!(
                    "client certificate {} with key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    };
    Ok(Arc::new(config))
}

fn read(path: &Path, setting: Setting) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` section of a PEM file; at least one.
fn certificates(path: &Path, setting: Setting) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, setting)?;
    let pem = |problem: String| TlsError::Pem {
        setting,
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem(
            "no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\" sections)".into(),
        ));
    }
    Ok(certs)
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(path, Setting::CaFile)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::Pem {
            setting: Setting::CaFile,
            path: path.to_owned(),
            problem: format!("certificate {} is not usable as a trust anchor: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = if found.errors.is_empty() {
            "none found".to_owned()
        } else {
            found
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(TlsError::NoSystemRoots(why));
    }
    if !found.errors.is_empty() {
        tracing::warn!(
            errors = found.errors.len(),
            "Some system trust store entries could not be read; using the {added} that could"
        );
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    #[test]
    fn a_ca_file_and_a_client_pair_load() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, issuer) = ca();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["anxin".to_owned()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        let tls = MqttTls {
            ca_file: Some(write(dir.path(), "ca.pem", &ca.pem())),
            client_cert_file: Some(write(dir.path(), "c.pem", &client.pem())),
            client_key_file: Some(write(dir.path(), "k.pem", &client_key.serialize_pem())),
        };
        client_config(&tls).unwrap();
    }

    #[test]
    fn bad_files_name_the_setting_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ca();
        let missing = MqttTls {
            ca_file: Some(dir.path().join("nope.pem")),
            ..Default::default()
        };
        let e = client_config(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("ca_file ") && e.contains("nope.pem: cannot read"),
            "{e}"
        );

        let garbage = MqttTls {
            ca_file: Some(write(dir.path(), "g.pem", "hello, not a certificate\n")),
            ..Default::default()
        };
        let e = client_config(&garbage).unwrap_err().to_string();
        assert!(e.contains("g.pem: no certificate in it"), "{e}");

        let broken = MqttTls {
            ca_file: Some(write(
                dir.path(),
                "b.pem",
                "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
            )),
            ..Default::default()
        };
        let e = client_config(&broken).unwrap_err().to_string();
        assert!(e.contains("b.pem: not valid PEM"), "{e}");

        let half = MqttTls {
            ca_file: Some(write(dir.path(), "ca.pem", &ca.pem())),
            client_cert_file: Some(dir.path().join("c.pem")),
            ..Default::default()
        };
        let e = client_config(&half).unwrap_err();
        assert_eq!(
            e.setting(),
            ("ANXIN_MQTT_CLIENT_CERT_FILE", "client_cert_file")
        );
        assert!(e.to_string().contains("go together"), "{e}");

        let no_key = MqttTls {
            ca_file: Some(dir.path().join("ca.pem")),
            client_cert_file: Some(write(dir.path(), "c2.pem", &ca.pem())),
            client_key_file: Some(write(dir.path(), "k2.pem", &ca.pem())),
        };
        let e = client_config(&no_key).unwrap_err();
        assert_eq!(e.setting().1, "client_key_file");
        assert!(e.to_string().contains("no private key"), "{e}");

        // A key that is not the certificate's.
        let other = rcgen::KeyPair::generate().unwrap();
        let mismatched = MqttTls {
            client_key_file: Some(write(dir.path(), "k3.pem", &other.serialize_pem())),
            ..no_key
        };
        let e = client_config(&mismatched).unwrap_err().to_string();
        assert!(e.contains("client certificate"), "{e}");
    }
}
