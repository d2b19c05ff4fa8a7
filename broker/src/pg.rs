//! Postgres connections for services that own one schema each.

use diesel::ConnectionError;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// The pool every service uses for request and consumer work.
pub type PgPool = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;

/// The `outbox` and `inbox` tables; every service runs these before its own.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Opens a connection whose `search_path` is `schema` alone, so unqualified
/// table names (the outbox, the inbox, the service's own tables) resolve to
/// the service's schema and nothing else.
pub async fn connect(url: &str, schema: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Quotes an SQL identifier (schema, role, database name).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// True when `error` means the connection itself is gone (server restarting,
/// network cut) rather than that the statement was wrong: work that failed this
/// way is retried as a whole once the database is back, without counting
/// against a message's delivery limit.
pub fn is_connection_error(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
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
