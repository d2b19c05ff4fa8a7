use diesel_async::pooled_connection::{PoolError, bb8::RunError};

/// Why a relay or consumer round failed. Both retry with backoff on any of these.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The AMQP connection or channel failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// A query failed.
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    /// A dedicated connection could not be opened.
    #[error("database connection: {0}")]
    Connect(#[from] diesel::ConnectionError),
    /// No pooled connection could be had.
    #[error("database pool: {0}")]
    Pool(#[from] RunError),
    /// The relay's LISTEN connection closed.
    #[error("the LISTEN connection closed")]
    ListenerClosed,
    /// The broker did not answer in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The broker cancelled our consumer (queue deleted, node shutting down).
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
}

impl From<PoolError> for BrokerError {
    fn from(error: PoolError) -> Self {
        BrokerError::Pool(RunError::User(error))
    }
}
