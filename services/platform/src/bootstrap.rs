//! Creates what a service needs before it can run as its own role: the
//! database, the role (login, no other privilege), and the schema it owns.
//!
//! Idempotent and safe to run from several processes at once. Uses the admin
//! URL only here; the service itself then connects as its role, which can do
//! nothing outside its schema: no other service's schema is granted to it, and
//! `PUBLIC` is revoked from every service schema.

use broker::pg::{self, quote_ident};
use diesel::{QueryableByName, sql_types::Bool, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// Prepares database, role and schema for the service whose own URL is
/// `service_url`, connecting with `admin_url` (a superuser).
pub async fn run(admin_url: &str, service_url: &str, schema: &str) -> anyhow::Result<()> {
    let target = Target::parse(service_url)?;
    check_identifier("schema", schema)?;

    let mut admin = pg::establish(admin_url).await?;
    // Roles are shared by the whole cluster: bootstraps take turns.
    admin
        .batch_execute("SELECT pg_advisory_lock(hashtext('dbps bootstrap'))")
        .await?;
    if !exists(
        &mut admin,
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS found",
        &target.database,
    )
    .await?
    {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                quote_ident(&target.database)
            ))
            .await?;
        tracing::info!(database = %target.database, "database created");
    }
    let role = quote_ident(&target.role);
    if !exists(
        &mut admin,
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS found",
        &target.role,
    )
    .await?
    {
        admin.batch_execute(&format!("CREATE ROLE {role}")).await?;
        tracing::info!(role = %target.role, "role created");
    }
    // Only a SCRAM verifier leaves this process, never the password itself:
    // statements end up in client and server logs.
    let password = match &target.password {
        Some(password) => {
            let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
            format!("PASSWORD {}", quote_literal(&verifier))
        }
        None => String::new(),
    };
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS {password}"
        ))
        .await?;
    drop(admin);

    let mut in_database = pg::establish_with(target.admin_config_for(admin_url)?).await?;
    let schema_ident = quote_ident(schema);
    let database = quote_ident(&target.database);
    in_database
        .batch_execute(&format!(
            "SELECT pg_advisory_lock(hashtext('dbps bootstrap'));
             CREATE SCHEMA IF NOT EXISTS {schema_ident} AUTHORIZATION {role};
             ALTER SCHEMA {schema_ident} OWNER TO {role};
             REVOKE ALL ON SCHEMA {schema_ident} FROM PUBLIC;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             REVOKE ALL ON DATABASE {database} FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role};
             ALTER ROLE {role} IN DATABASE {database} SET search_path TO {schema_ident};"
        ))
        .await?;
    tracing::info!(database = %target.database, role = %target.role, schema, "bootstrap done");
    Ok(())
}

/// The parts of a service URL bootstrap needs.
struct Target {
    role: String,
    password: Option<String>,
    database: String,
}

impl Target {
    /// Reads a libpq-style URL, with one host or several.
    fn parse(service_url: &str) -> anyhow::Result<Target> {
        let config: tokio_postgres::Config = service_url
            .parse()
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        let role = config.get_user().unwrap_or_default().to_owned();
        let database = config.get_dbname().unwrap_or(&role).to_owned();
        check_identifier("role", &role)?;
        check_identifier("database", &database)?;
        let password = config
            .get_password()
            .map(|bytes| {
                String::from_utf8(bytes.to_vec())
                    .ok()
                    .filter(|text| !text.contains('\0'))
                    .ok_or_else(|| anyhow::anyhow!("DATABASE_URL: the password is not text"))
            })
            .transpose()?;
        Ok(Target {
            role,
            password,
            database,
        })
    }

    /// The admin URL's connection, pointed at this target's database.
    fn admin_config_for(&self, admin_url: &str) -> anyhow::Result<tokio_postgres::Config> {
        let mut config =
            pg::parse_url(admin_url).map_err(|e| anyhow::anyhow!("ADMIN_DATABASE_URL: {e}"))?;
        config.dbname(&self.database);
        Ok(config)
    }
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

async fn exists(conn: &mut AsyncPgConnection, query: &str, name: &str) -> anyhow::Result<bool> {
    let row: Found = diesel::sql_query(query)
        .bind::<Text, _>(name)
        .get_result(conn)
        .await?;
    Ok(row.found)
}

/// Names we create must be plain identifiers: lower-case letters, digits and `_`.
fn check_identifier(what: &str, name: &str) -> anyhow::Result<()> {
    let mut bytes = name.bytes();
    let valid = name.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    anyhow::ensure!(
        valid,
        "{what} name {name:?} must match [a-z_][a-z0-9_]{{0,62}}"
    );
    Ok(())
}

/// A string literal; `standard_conforming_strings` (on since Postgres 9.1)
/// makes doubling the quote the only escape needed.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_give_role_password_and_database() {
        let target = Target::parse("postgres://order_svc:p%40ss'word@db:5432/shop").unwrap();
        assert_eq!(target.role, "order_svc");
        assert_eq!(target.password.as_deref(), Some("p@ss'word"));
        assert_eq!(target.database, "shop");
        assert_eq!(quote_literal("p@ss'word"), "'p@ss''word'");
        let admin = target
            .admin_config_for("postgres://postgres@127.0.0.1:5432/postgres")
            .unwrap();
        assert_eq!(admin.get_dbname(), Some("shop"));
        assert_eq!(admin.get_user(), Some("postgres"));
    }

    #[test]
    fn urls_may_list_several_hosts() {
        let url = "postgres://order_svc:pw@127.0.0.1:5441,127.0.0.1:5451/dbps?target_session_attrs=read-write";
        let target = Target::parse(url).unwrap();
        assert_eq!(target.role, "order_svc");
        assert_eq!(target.database, "dbps");
        let admin = target
            .admin_config_for("postgres://postgres@127.0.0.1:5441,127.0.0.1:5451/postgres?target_session_attrs=read-write")
            .unwrap();
        assert_eq!(admin.get_hosts().len(), 2);
        assert_eq!(admin.get_dbname(), Some("dbps"));
    }

    #[test]
    fn names_that_are_not_plain_identifiers_are_refused() {
        assert!(Target::parse("postgres://Order:x@db/shop").is_err());
        assert!(Target::parse("postgres://order_svc:x@db/sh%22op").is_err());
        assert!(check_identifier("schema", "orders").is_ok());
        assert!(check_identifier("schema", "1orders").is_err());
    }
}
