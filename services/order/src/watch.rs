//! `WatchOrder` without polling: one LISTEN connection per process hears every
//! order change (`pg_notify` in the changing transaction, so only committed
//! changes, from any replica) and reads a watched order once per change,
//! however many clients watch it. Each watcher then only receives.

use std::{
    collections::HashMap,
    pin::pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use broker::supervise::{Restarts, Up};
use dbps::order::v1::Order;
use diesel_async::SimpleAsyncConnection;
use futures_util::StreamExt;
use platform::db::{PgPool, connect, quote_ident};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{db::orders, wire};

type Latest = Option<Arc<Order>>;

/// The watched orders of this process.
pub struct Watchers {
    pool: PgPool,
    watched: Mutex<HashMap<Uuid, watch::Sender<Latest>>>,
}

/// A client's interest in one order; dropping it stops the watching.
pub struct Subscription {
    order_id: Uuid,
    receiver: Option<watch::Receiver<Latest>>,
    watchers: Arc<Watchers>,
}

impl Watchers {
    /// No order watched yet.
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Watchers {
            pool,
            watched: Mutex::new(HashMap::new()),
        })
    }

    /// Starts receiving the states `order_id` takes from now on.
    pub fn subscribe(self: &Arc<Self>, order_id: Uuid) -> Subscription {
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let receiver = watched
            .entry(order_id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Subscription {
            order_id,
            receiver: Some(receiver),
            watchers: self.clone(),
        }
    }

    /// How many orders are watched (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.watched.lock().map(|w| w.len()).unwrap_or_default()
    }

    fn is_watched(&self, order_id: Uuid) -> bool {
        self.watched
            .lock()
            .map(|w| w.contains_key(&order_id))
            .unwrap_or_default()
    }

    /// Reads the order once and hands it to all its watchers.
    async fn refresh(&self, order_id: Uuid) {
        let order = match self.pool.get().await {
            Ok(mut conn) => orders::find(&mut conn, order_id).await,
            Err(error) => {
                tracing::warn!(%error, %order_id, "cannot read a watched order");
                return;
            }
        };
        match order {
            Ok(Some(stored)) => {
                let latest = Some(Arc::new(wire::order(stored)));
                if let Ok(watched) = self.watched.lock()
                    && let Some(sender) = watched.get(&order_id)
                {
                    sender.send_replace(latest);
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, %order_id, "cannot read a watched order"),
        }
    }

    async fn refresh_all(&self) {
        let ids: Vec<Uuid> = self
            .watched
            .lock()
            .map(|w| w.keys().copied().collect())
            .unwrap_or_default();
        for order_id in ids {
            self.refresh(order_id).await;
        }
    }

    /// Listens for order changes until `shutdown`, reconnecting after a loss
    /// (and then refreshing every watched order, in case a change was missed).
    pub async fn listen(
        self: Arc<Self>,
        database_url: String,
        schema: &'static str,
        shutdown: CancellationToken,
    ) {
        let what = "order watch listener lost its connection";
        let mut restarts = Restarts::new(what, Duration::from_secs(5));
        loop {
            let error = tokio::select! {
                result = self.listen_once(&database_url, schema, restarts.attempt()) => match result {
                    Ok(()) => anyhow::anyhow!("the LISTEN connection closed"),
                    Err(error) => error,
                },
                _ = shutdown.cancelled() => return,
            };
            if !restarts.wait(error, &shutdown).await {
                return;
            }
        }
    }

    async fn listen_once(&self, database_url: &str, schema: &str, up: Up) -> anyhow::Result<()> {
        let mut conn = connect(database_url, schema).await?;
        conn.batch_execute(&format!("LISTEN {}", quote_ident(orders::CHANGES_CHANNEL)))
            .await?;
        up.mark();
        self.refresh_all().await;
        let mut notifications = pin!(conn.notifications_stream());
        while let Some(notification) = notifications.next().await {
            let notification = notification?;
            if let Ok(order_id) = Uuid::try_parse(&notification.payload)
                && self.is_watched(order_id)
            {
                self.refresh(order_id).await;
            }
        }
        Ok(())
    }
}

impl Subscription {
    /// Waits for the next state; `None` if the process stops watching.
    pub async fn next(&mut self) -> Option<Arc<Order>> {
        let receiver = self.receiver.as_mut()?;
        loop {
            receiver.changed().await.ok()?;
            if let Some(latest) = receiver.borrow_and_update().clone() {
                return Some(latest);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Ok(mut watched) = self.watchers.watched.lock()
            && watched
                .get(&self.order_id)
                .is_some_and(|sender| sender.receiver_count() == 0)
        {
            watched.remove(&self.order_id);
        }
    }
}
