//! The process's one AMQP connection, reopened on demand after it is lost.
//!
//! lapin does not recover connections we rely on, so recovery is explicit: every
//! user (the relay, each consumer queue) asks [`Amqp::channel`] for a fresh
//! channel whenever its current one fails, after its own backoff. The first
//! caller after a loss reconnects; the others reuse the new connection.
//!
//! A RabbitMQ cluster is given as several node URLs. A reconnect tries the
//! nodes in turn, starting with the one after the node that was lost, so a
//! process fails over to a surviving node at once instead of waiting for the
//! lost one to come back. Which node a client is connected to does not matter
//! for correctness: quorum queues are reachable from every node of the cluster.

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
    /// The cluster's nodes, in the order this process prefers them.
    urls: Vec<String>,
    name: String,
    tls: Tls,
    connection: Mutex<Current>,
}

/// The live connection and the node it goes to.
#[derive(Default)]
struct Current {
    connection: Option<Connection>,
    /// Index in `urls` of the node last connected to (or tried).
    node: usize,
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
    /// Describes a connection to `urls`: one node's URL, or a cluster's node
    /// URLs separated by commas. Nothing is opened until the first
    /// [`Amqp::channel`]. `name` shows in the broker's connection list.
    pub fn new(urls: impl AsRef<str>, name: impl Into<String>) -> Self {
        Amqp {
            inner: Arc::new(Inner {
                urls: split_urls(urls.as_ref()),
                name: name.into(),
                tls: Tls::default(),
                connection: Mutex::new(Current::default()),
            }),
        }
    }

    /// The same connection settings with TLS for `amqps://`.
    pub fn with_tls(self, tls: Tls) -> Self {
        Amqp {
            inner: Arc::new(Inner {
                urls: self.inner.urls.clone(),
                name: self.inner.name.clone(),
                tls,
                connection: Mutex::new(Current::default()),
            }),
        }
    }

    /// How many nodes the cluster was given with.
    pub fn nodes(&self) -> usize {
        self.inner.urls.len()
    }

    /// Opens a new channel, connecting first if there is no live connection.
    /// A lost connection is replaced by one to the next node that answers.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut current = self.inner.connection.lock().await;
        if let Some(live) = current.connection.as_ref() {
            if live.status().connected() {
                match live.create_channel().await {
                    Ok(channel) => return Ok(channel),
                    Err(error) => tracing::warn!(%error, "AMQP connection unusable; reconnecting"),
                }
            }
            // Lost: start with the next node, which is likely still up.
            current.connection = None;
            current.node = (current.node + 1) % self.inner.urls.len();
        }
        let first = current.node;
        let mut last_error = None;
        for step in 0..self.inner.urls.len() {
            let node = (first + step) % self.inner.urls.len();
            current.node = node;
            match self.connect(node).await {
                Ok(fresh) => {
                    let channel = fresh.create_channel().await?;
                    current.connection = Some(fresh);
                    return Ok(channel);
                }
                Err(error) => {
                    if self.inner.urls.len() > 1 {
                        tracing::warn!(%error, node, "RabbitMQ node unreachable; trying the next");
                    }
                    last_error = Some(error);
                }
            }
        }
        // Every node refused: the next call starts the round again here.
        current.node = first;
        Err(last_error.unwrap_or(BrokerError::Timeout("connecting to RabbitMQ")))
    }

    async fn connect(&self, node: usize) -> Result<Connection, BrokerError> {
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
            &self.inner.urls[node],
            properties,
            tls,
            lapin::runtime::default_runtime()?,
        );
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| BrokerError::Timeout("connecting to RabbitMQ"))??;
        tracing::info!(connection = %self.inner.name, node, "connected to RabbitMQ");
        Ok(fresh)
    }

    /// Closes the connection, if open; unacknowledged deliveries return to
    /// their queues.
    pub async fn close(&self) {
        let connection = self.inner.connection.lock().await.connection.take();
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

/// The node URLs of `urls`, separated by commas (a URL has no literal comma:
/// RFC 3986 would have it percent-encoded in user info, host or vhost).
fn split_urls(urls: &str) -> Vec<String> {
    let split: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if split.is_empty() {
        // Let the connect attempt report the empty URL.
        vec![urls.to_owned()]
    } else {
        split
    }
}

#[cfg(test)]
mod tests {
    use super::split_urls;

    #[test]
    fn a_comma_separated_list_names_every_node() {
        assert_eq!(
            split_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,"),
            ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]
        );
        assert_eq!(split_urls("amqp://a/%2f"), ["amqp://a/%2f"]);
    }
}
