//! The pool and the migrations of a service's schema.

use std::time::Duration;

use broker::pg::{self, PgPool};
use diesel::{
    migration::{Migration, MigrationSource},
    pg::Pg,
    sql_types::Text,
};
use diesel_async::{
    AsyncPgConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

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
