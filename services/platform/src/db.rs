//! A service's Postgres: the pool, writes that wake the relay after they
//! commit, dedicated connections, and the migrations of its schema.
//!
//! Services take everything Postgres from here; the connection plumbing
//! itself (schema pinning, multi-host URLs, failover checks) lives in
//! `broker::pg`, which the relay and the consumers share.

use std::time::Duration;

use broker::{Outbox, pg};
use diesel::{
    migration::{Migration, MigrationSource},
    pg::Pg,
    result::Error as DieselError,
    sql_types::Text,
};
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        bb8::{PooledConnection, RunError},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

pub use broker::pg::{PgPool, Statement, connect, is_connection_error, quote_ident, statement};

/// A connection checked out of the pool.
pub type Conn<'a> = PooledConnection<'a, AsyncPgConnection>;

/// The service's pool and outbox: every write that enqueues events goes
/// through [`Db::transaction`] or [`Db::write`], which wake the relay once the
/// events are committed.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    outbox: Outbox,
}

impl Db {
    /// Writes through `outbox` on connections from `pool`.
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        Db { pool, outbox }
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The outbox, to enqueue events inside a [`Db::transaction`].
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// A connection for reads.
    pub async fn conn(&self) -> Result<Conn<'_>, RunError> {
        self.pool.get().await
    }

    /// Runs `work` in one transaction (rolled back if it fails), then wakes
    /// the relay for the events it enqueued.
    pub async fn transaction<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DieselError> + From<RunError>,
    {
        let mut conn = self.pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        AnsiTransactionManager::begin_transaction(conn).await?;
        match work(conn).await {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(conn).await?;
                self.outbox.committed();
                Ok(value)
            }
            Err(error) => match AnsiTransactionManager::rollback_transaction(conn).await {
                // The work's own error says more than a failed rollback
                // (the pool drops a connection left in a transaction).
                Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(error),
                Err(rollback) => Err(rollback.into()),
            },
        }
    }

    /// Runs `work` outside a transaction, for statements atomic on their own
    /// (one `INSERT … WITH` writing business rows and the outbox row), then
    /// wakes the relay.
    pub async fn write<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<RunError>,
    {
        let mut conn = self.pool.get().await?;
        let value = work(&mut conn).await?;
        self.outbox.committed();
        Ok(value)
    }
}

/// Builds the pool; every connection has `search_path` pinned to `schema`.
pub async fn pool(url: &str, schema: &'static str, size: u32) -> anyhow::Result<PgPool> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.custom_setup = Box::new(move |url| Box::pin(pg::connect(url, schema)));
    // No `SELECT 1` before every checkout: a connection the server dropped
    // fails its first query (UNAVAILABLE to that one caller) and leaves the
    // pool. Only for a while after a statement met a read-only server (a
    // demoted primary) is each connection checked, and those still going to
    // a standby are dropped, so the pool refills from the new primary.
    config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn| {
        Box::pin(async move {
            if pg::must_verify_primary() {
                pg::verify_primary(conn).await?;
            }
            Ok(())
        })
    }));
    let manager = AsyncDieselConnectionManager::new_with_config(url, config);
    let pool = PgPool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)
        .await?;
    Ok(pool)
}

/// Several embedded migration sets run as one, in order.
struct Chain(Vec<&'static EmbeddedMigrations>);

impl MigrationSource<Pg> for Chain {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        let mut all = Vec::new();
        for set in &self.0 {
            all.extend(MigrationSource::<Pg>::migrations(*set)?);
        }
        Ok(all)
    }
}

/// Runs the pending `migrations` in `schema`, one process at a time (replicas
/// starting together wait for each other). Returns the versions applied.
pub async fn migrate(
    url: &str,
    schema: &str,
    migrations: Vec<&'static EmbeddedMigrations>,
) -> anyhow::Result<Vec<String>> {
    let mut conn = pg::connect(url, schema).await?;
    diesel::sql_query("SELECT pg_advisory_lock(hashtext('migrations ' || $1))")
        .bind::<Text, _>(schema)
        .execute(&mut conn)
        .await?;
    // diesel's harness is synchronous; run it off the async workers.
    let applied = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        let versions = conn
            .run_pending_migrations(Chain(migrations))
            .map_err(|error| anyhow::anyhow!("migrations failed: {error}"))?;
        Ok(versions.iter().map(ToString::to_string).collect())
    })
    .await??;
    // Dropping the connection released the lock.
    Ok(applied)
}
