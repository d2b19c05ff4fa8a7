//! The process's one AMQP connection, reopened on demand after it is lost.
//!
//! lapin does not recover connections we rely on, so recovery is explicit: every
//! user (the relay, each consumer queue) asks [`Amqp::channel`] for a fresh
//! channel whenever its current one fails, after its own backoff. The first
//! caller after a loss reconnects; the others reuse the new connection.

use std::sync::Arc;

use lapin::{
    Channel, Connection, ConnectionProperties,
    tcp::{OwnedIdentity, OwnedTLSConfig},
};
use tokio::sync::Mutex;

use crate::BrokerError;

/// Longest wait for the broker to accept a connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A shared, lazily (re)connected AMQP connection.
#[derive(Clone)]
pub struct Amqp {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    name: String,
    tls: Tls,
    connection: Mutex<Option<Connection>>,
}

/// TLS settings for `amqps://` URLs.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// PEM certificates to trust instead of the system's roots.
    pub ca_pem: Option<String>,
    /// PEM client certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL holds the password: never print it.
        f.debug_struct("Amqp")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Amqp {
    /// Describes a connection to `url`; nothing is opened until the first
    /// [`Amqp::channel`]. `name` shows in the broker's connection list.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Amqp {
            inner: Arc::new(Inner {
                url: url.into(),
                name: name.into(),
                tls: Tls::default(),
                connection: Mutex::new(None),
            }),
        }
    }

    /// The same connection settings with TLS for `amqps://`.
    pub fn with_tls(self, tls: Tls) -> Self {
        Amqp {
            inner: Arc::new(Inner {
                url: self.inner.url.clone(),
                name: self.inner.name.clone(),
                tls,
                connection: Mutex::new(None),
            }),
        }
    }

    /// Opens a new channel, connecting first if there is no live connection.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut connection = self.inner.connection.lock().await;
        if let Some(live) = connection.as_ref().filter(|c| c.status().connected()) {
            match live.create_channel().await {
                Ok(channel) => return Ok(channel),
                Err(error) => tracing::warn!(%error, "AMQP connection unusable; reconnecting"),
            }
        }
        let properties =
            ConnectionProperties::default().with_connection_name(self.inner.name.clone().into());
        let tls = OwnedTLSConfig {
            cert_chain: self.inner.tls.ca_pem.clone(),
            identity: self
                .inner
                .tls
                .identity
                .clone()
                .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        };
        let connecting = Connection::connect_with_config(
            &self.inner.url,
            properties,
            tls,
            lapin::runtime::default_runtime()?,
        );
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| BrokerError::Timeout("connecting to RabbitMQ"))??;
        tracing::info!(connection = %self.inner.name, "connected to RabbitMQ");
        let channel = fresh.create_channel().await?;
        *connection = Some(fresh);
        Ok(channel)
    }

    /// Closes the connection, if open; unacknowledged deliveries return to
    /// their queues.
    pub async fn close(&self) {
        let connection = self.inner.connection.lock().await.take();
        if let Some(connection) = connection {
            // A broker that is already gone never answers close-ok: do not
            // let a shutdown wait for it.
            let closing = connection.close(200, "shutting down".into());
            match tokio::time::timeout(std::time::Duration::from_secs(5), closing).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "AMQP connection was already closed"),
                Err(_) => tracing::warn!("the broker did not confirm closing the connection"),
            }
        }
    }
}
