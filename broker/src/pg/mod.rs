//! Postgres connections for services that own one schema each.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use diesel::ConnectionError;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

mod statement;

pub use statement::{Statement, statement};

/// The pool every service uses for request and consumer work.
pub type PgPool = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;

/// The `outbox` and `inbox` tables; every service runs these before its own.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Opens a connection whose `search_path` is `schema` alone, so unqualified
/// table names (the outbox, the inbox, the service's own tables) resolve to
/// the service's schema and nothing else.
pub async fn connect(url: &str, schema: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let mut conn = establish(url).await?;
    conn.batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Opens a connection to `url`, a libpq-style URL or key/value string.
///
/// It may name several hosts, as a Postgres with replicas is given:
/// `postgres://u:p@db-a:5432,db-b:5432/db?target_session_attrs=read-write`
/// connects to the first that answers and accepts writes, so after a
/// failover every new connection finds the promoted primary.
///
/// TCP keepalives are on (10 s idle, then 3 probes 5 s apart) unless the URL
/// sets `keepalives` itself, so a connection to a host that vanished without
/// closing it (a crash, a partition) fails in about half a minute instead of
/// waiting for the kernel's two hours; the server does the same for its side
/// of a relay leader's lock when its `tcp_keepalives_*` are set.
pub async fn establish(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    establish_with(parse_url(url)?).await
}

/// Parses `url` as [`establish`] does, keepalives included.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, ConnectionError> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|error: tokio_postgres::Error| {
            ConnectionError::InvalidConnectionUrl(error.to_string())
        })?;
    if !url.contains("keepalives") {
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
    Ok(config)
}

/// Opens a connection as `config` describes.
pub async fn establish_with(
    config: tokio_postgres::Config,
) -> Result<AsyncPgConnection, ConnectionError> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| ConnectionError::BadConnection(error.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// Until when (milliseconds since the epoch) pools verify that a connection
/// goes to a primary before handing it out; see [`on_read_only_server`].
static VERIFY_PRIMARY_UNTIL: AtomicU64 = AtomicU64::new(0);

/// How long after a read-only error pools keep verifying connections.
const VERIFY_PRIMARY_FOR: Duration = Duration::from_secs(30);

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Records that a statement failed because its server no longer accepts
/// writes: a primary demoted to a standby while our connections stayed open.
/// For the next 30 s [`must_verify_primary`] is true, and the pool checks
/// each connection before handing it out and drops those to a standby, so
/// the pool refills from the new primary. Checking every checkout always
/// would cost a round trip per request for an event that happens at failover.
pub fn on_read_only_server() {
    let until = now_millis() + VERIFY_PRIMARY_FOR.as_millis() as u64;
    VERIFY_PRIMARY_UNTIL.fetch_max(until, Ordering::Relaxed);
}

/// Whether connections should be verified as going to a primary before use.
pub fn must_verify_primary() -> bool {
    now_millis() < AtomicU64::load(&VERIFY_PRIMARY_UNTIL, Ordering::Relaxed)
}

/// Fails if `conn`'s server does not accept writes (a standby, or a session
/// set read-only).
pub async fn verify_primary(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    #[derive(diesel::QueryableByName)]
    struct ReadOnly {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        read_only: bool,
    }
    let row: ReadOnly = diesel::sql_query(
        "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool AS read_only",
    )
    .get_result(conn)
    .await?;
    if row.read_only {
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ReadOnlyTransaction,
            Box::new("the server does not accept writes (a standby)".to_owned()),
        ))
    } else {
        Ok(())
    }
}

/// Quotes an SQL identifier (schema, role, database name).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// True when `error` means the connection itself is gone (server restarting,
/// network cut) or goes to a server that no longer accepts writes (a demoted
/// primary), rather than that the statement was wrong: work that failed this
/// way is retried as a whole once the database is back, without counting
/// against a message's delivery limit. A read-only server also starts the
/// pools' checks of [`on_read_only_server`].
pub fn is_connection_error(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => {
            on_read_only_server();
            true
        }
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)
        | Error::BrokenTransactionManager => true,
        // The server tells open sessions it is going away (SQLSTATE 57P01..57P03)
        // before it closes them; diesel keeps only the message.
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            message.starts_with("terminating connection")
                || message.contains("the database system is")
        }
        _ => false,
    }
}

/// Runs `SELECT 1`: used by readiness checks.
pub async fn ping(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
        .execute(conn)
        .await
        .map(|_| ())
}
