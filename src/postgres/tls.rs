//! TLS for our own PostgreSQL connections (ledger, snapshot, counts,
//! restore checks), with the meanings libpq gives `sslmode` so they behave
//! like the `pg_dump`/`pg_restore` beside them: `prefer` (the default) uses
//! TLS when the server offers it, `require` refuses a server that does not,
//! `disable` never asks. Neither checks the server's certificate, as in
//! libpq: Cloud SQL's is signed by a per-instance CA. tokio-postgres knows
//! no other modes; `verify-ca` and `verify-full` are refused when the URL is
//! read. Unix sockets (Cloud SQL's `?host=/cloudsql/...`) never use TLS.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every PostgreSQL connection of ours uses: one per process,
/// so its configuration is built once and later handshakes can resume
/// earlier sessions.
pub fn connector() -> MakeRustlsConnect {
    static CONNECTOR: std::sync::OnceLock<MakeRustlsConnect> = std::sync::OnceLock::new();
    CONNECTOR.get_or_init(build_connector).clone()
}

fn build_connector() -> MakeRustlsConnect {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // P-256 first: PostgreSQL's ssl_ecdh_curve defaults to prime256v1, the
    // only group such a server accepts, so a different first key share
    // costs a HelloRetryRequest round trip on every connection.
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::aws_lc_rs::kx_group::SECP384R1,
    ];
    let provider = Arc::new(provider);
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// Accepts the server's certificate without checking who issued it (libpq's
/// `require`), but still checks that the server holds its key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
