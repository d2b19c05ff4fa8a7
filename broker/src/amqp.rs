//! The process's one AMQP connection, reopened on demand after it is lost.
//!
//! lapin does not recover connections we rely on, so recovery is explicit: every
//! user (the relay, each consumer queue) asks [`Amqp::channel`] for a fresh
//! channel whenever its current one fails, after its own backoff. The first
//! caller after a loss reconnects; the others reuse the new connection.

use std::sync::Arc;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::BrokerError;

/// A shared, lazily (re)connected AMQP connection.
#[derive(Clone)]
pub struct Amqp {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    name: String,
    connection: Mutex<Option<Connection>>,
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
        let fresh = Connection::connect(&self.inner.url, properties).await?;
        tracing::info!(connection = %self.inner.name, "connected to RabbitMQ");
        let channel = fresh.create_channel().await?;
        *connection = Some(fresh);
        Ok(channel)
    }

    /// Closes the connection, if open; unacknowledged deliveries return to
    /// their queues.
    pub async fn close(&self) {
        let connection = self.inner.connection.lock().await.take();
        if let Some(Err(error)) = match connection {
            Some(connection) => Some(connection.close(200, "shutting down".into()).await),
            None => None,
        } {
            tracing::debug!(%error, "AMQP connection was already closed");
        }
    }
}
