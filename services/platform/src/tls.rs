//! Optional TLS for gRPC, served and called, with mutual TLS on demand.
//!
//! * `GRPC_TLS_CERT` + `GRPC_TLS_KEY`: the server speaks TLS with this identity.
//! * `GRPC_TLS_CLIENT_CA`: and then requires every client to present a
//!   certificate this CA signed (mutual TLS); others are refused during the
//!   handshake, before any request.
//! * `GRPC_TLS_CA`: calls this service makes (its healthcheck, the reporting
//!   service's composition) use TLS and trust servers this CA signed, showing
//!   `GRPC_TLS_CERT` as their client certificate when one is set.
//! * `AMQP_TLS_CA`, `AMQP_TLS_CERT` + `AMQP_TLS_KEY`: for an `amqps://` URL, the
//!   CA to trust instead of the system's, and a client certificate.

use std::path::Path;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::Settings;

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn identity(settings: &Settings) -> anyhow::Result<Option<Identity>> {
    match (&settings.grpc_tls_cert, &settings.grpc_tls_key) {
        (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(read(cert)?, read(key)?))),
        (None, None) => Ok(None),
        _ => anyhow::bail!("GRPC_TLS_CERT and GRPC_TLS_KEY go together"),
    }
}

/// The server's TLS, if configured.
pub fn server(settings: &Settings) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some(identity) = identity(settings)? else {
        anyhow::ensure!(
            settings.grpc_tls_client_ca.is_none(),
            "GRPC_TLS_CLIENT_CA needs GRPC_TLS_CERT and GRPC_TLS_KEY"
        );
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &settings.grpc_tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// TLS for the calls this service makes, if configured.
pub fn client(settings: &Settings) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &settings.grpc_tls_ca else {
        return Ok(None);
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some(identity) = identity(settings)? {
        config = config.identity(identity);
    }
    Ok(Some(config))
}

/// TLS for an `amqps://` connection.
pub fn amqp(settings: &Settings) -> anyhow::Result<broker::amqp::Tls> {
    let ca_pem = match &settings.amqp_tls_ca {
        Some(path) => Some(String::from_utf8(read(path)?).context("AMQP_TLS_CA is not PEM text")?),
        None => None,
    };
    let identity = match (&settings.amqp_tls_cert, &settings.amqp_tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        (None, None) => None,
        _ => anyhow::bail!("AMQP_TLS_CERT and AMQP_TLS_KEY go together"),
    };
    Ok(broker::amqp::Tls { ca_pem, identity })
}
