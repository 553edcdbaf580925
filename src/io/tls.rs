//! TLS on client connections: rustls with its `ring` provider, driven over glommio's sockets
//! by futures-rustls (the streams stay futures-io streams, so the listener's sniffing, h2 and
//! the gateway run on them unchanged).
//!
//! - The server's configuration comes from etcd's flags: `--cert-file` and `--key-file` (PEM),
//!   and with `--client-cert-auth` every client must present a certificate signed by a CA of
//!   `--trusted-ca-file`. ALPN offers `http/1.1` and `h2`: gRPC and the JSON gateway share
//!   the port, as etcd's do.
//! - A client's configuration (ringbench, and a member forwarding to its leader's client URL)
//!   trusts the CAs of a PEM file (etcdctl's `--cacert`) and may present a certificate
//!   (`--cert`, `--key`).
//!
//! Files are read once, at start; a file that cannot be read or parsed is an error that names
//! it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use futures_rustls::client::TlsStream as ClientTlsStream;
pub use futures_rustls::server::TlsStream as ServerTlsStream;
pub use futures_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(file)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("{}: {error}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", file.display()));
    }
    Ok(certificates)
}

fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(file).map_err(|error| format!("{}: {error}", file.display()))
}

fn read_roots(file: &Path) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(file)? {
        roots.add(certificate).map_err(|error| format!("{}: {error}", file.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The client port's TLS: `cert_file` and `key_file` (PEM), and with `client_cert_auth` the
/// clients' certificates checked against the CAs of `trusted_ca_file`.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    trusted_ca_file: Option<&Path>,
    client_cert_auth: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match (client_cert_auth, trusted_ca_file) {
        (false, _) => builder.with_no_client_auth(),
        (true, None) => return Err("--client-cert-auth needs --trusted-ca-file".to_owned()),
        (true, Some(ca_file)) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(read_roots(ca_file)?, provider())
                    .build()
                    .map_err(|error| format!("{}: {error}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(read_certificates(cert_file)?, read_key(key_file)?)
        .map_err(|error| format!("{} and {}: {error}", cert_file.display(), key_file.display()))?;
    // The server picks the first of its protocols the client offers: gRPC clients offer h2
    // alone; curl offers both and gets HTTP/1.1, which the JSON gateway speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: servers' certificates checked against the CAs of `ca_file`, and
/// `certificate` (cert file, key file) presented when the server asks for one.
pub fn client_config(ca_file: &Path, certificate: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(read_roots(ca_file)?);
    let mut config = match certificate {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => builder
            .with_client_auth_cert(read_certificates(cert_file)?, read_key(key_file)?)
            .map_err(|error| format!("{} and {}: {error}", cert_file.display(), key_file.display()))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the host of its endpoint (an
/// IP address matches the certificate's IP SANs, a name its DNS SANs).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|error| format!("{host}: {error}"))
}
