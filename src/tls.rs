//! TLS configurations read from PEM files, with rustls on ring (the provider tonic's TLS
//! already uses, so there is one crypto backend): the Socket.IO port's server side
//! (`--http-tls-cert` / `--http-tls-key`) and the CA a `rediss://` connection trusts
//! (`--redis-tls-ca`).

use std::{path::Path, sync::Arc};

use tokio_rustls::{
    rustls::{
        crypto::ring,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        ClientConfig, RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};

use crate::config::{read_file, Config, ConfigError};

/// The TLS acceptor of the Socket.IO port, or `None` when it serves clear text. HTTP/1.1 only
/// (ALPN `http/1.1`): WebSocket upgrades and long polling are what browsers and
/// socket.io-client use, and HTTP/2 WebSockets (RFC 8441) are not something they negotiate.
pub fn http_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.http_tls_cert, &config.http_tls_key) else {
        return Ok(None);
    };
    let unusable = |cause: String| {
        ConfigError::Invalid(format!(
            "--http-tls-cert / --http-tls-key: not a usable PEM certificate chain and key: {cause}"
        ))
    };
    let chain = certificates("--http-tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read_file("--http-tls-key", key)?)
        .map_err(|e| unusable(format!("private key: {e}")))?;
    let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| unusable(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The rustls client configuration for `rediss://` trusting only the CAs of `--redis-tls-ca`
/// (a private CA is the usual case for Redis), or `None` without the flag: fred then trusts
/// the system store (which honours `SSL_CERT_FILE`).
pub fn redis_client(config: &Config) -> Result<Option<ClientConfig>, ConfigError> {
    let Some(ca) = &config.redis_tls_ca else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates("--redis-tls-ca", ca)? {
        roots
            .add(cert)
            .map_err(|e| ConfigError::Invalid(format!("--redis-tls-ca {}: {e}", ca.display())))?;
    }
    let client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("--redis-tls-ca: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(client))
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(what, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Invalid(format!("{what} {}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(["gw"].iter().chain(args)).unwrap()
    }

    #[test]
    fn a_chain_and_its_key_make_an_http_1_1_acceptor_and_another_key_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = write("cert.pem", signed.cert.pem());
        let key = write("key.pem", signed.signing_key.serialize_pem());
        let wrong = write("other.pem", other.serialize_pem());

        let acceptor = http_acceptor(&config(&["--http-tls-cert", &cert, "--http-tls-key", &key]))
            .unwrap()
            .unwrap();
        assert_eq!(acceptor.config().alpn_protocols, [b"http/1.1".to_vec()]);
        let err = http_acceptor(&config(&[
            "--http-tls-cert",
            &cert,
            "--http-tls-key",
            &wrong,
        ]))
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with(
                "--http-tls-cert / --http-tls-key: not a usable PEM certificate chain and key: "
            ),
            "{err}"
        );
        assert!(http_acceptor(&config(&[])).unwrap().is_none());
    }

    #[test]
    fn unusable_files_are_named_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not PEM\n").unwrap();
        let junk = junk.to_str().unwrap();
        let err = http_acceptor(&config(&["--http-tls-cert", junk, "--http-tls-key", junk]))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!("--http-tls-cert {junk}: no PEM certificate in it")
        );
        let err = redis_client(&config(&[
            "--redis-url",
            "rediss://h:1",
            "--redis-tls-ca",
            "/nonexistent/ca.pem",
        ]))
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with("--redis-tls-ca /nonexistent/ca.pem: "),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
