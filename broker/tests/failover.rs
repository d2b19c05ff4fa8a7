//! Failing over to another broker node or database server, against the real
//! servers: a node that refuses is skipped, a several-host database URL
//! reaches the host that accepts writes, and a pool drops connections to a
//! server that turned read-only (a demoted primary) once a write meets it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use broker::{Amqp, pg};
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use testkit::TestEnv;

/// A port nothing listens on: connecting there is refused at once.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_node_that_refuses_is_skipped_for_the_next_in_the_list() {
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", refused_port());
    let amqp = Amqp::new(format!("{dead},{}", testkit::amqp_url()), "failover-test");
    assert_eq!(amqp.nodes(), 2);
    let channel = amqp.channel().await.expect("the live node answers");
    assert!(channel.status().connected());
    amqp.close().await;

    let only_dead = Amqp::new(&dead, "failover-test");
    assert!(only_dead.channel().await.is_err());
}

#[derive(QueryableByName)]
struct Database {
    #[diesel(sql_type = Text)]
    name: String,
}

#[tokio::test]
async fn a_url_with_several_hosts_reaches_the_one_that_answers() {
    let env = TestEnv::new().await;
    let url = env.admin_url_of(&env.database);
    let (scheme_and_user, rest) = url.rsplit_once('@').unwrap();
    let with_dead_host = format!(
        "{scheme_and_user}@127.0.0.1:{},{rest}?target_session_attrs=read-write",
        refused_port()
    );
    let mut conn = pg::establish(&with_dead_host).await.unwrap();
    let row: Database = diesel::sql_query("SELECT current_database() AS name")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.name, env.database);
}

#[tokio::test]
async fn the_pool_drops_connections_to_a_read_only_server_after_a_write_meets_one() {
    let env = TestEnv::new().await;
    let url = env.admin_url_of(&env.database);
    let mut admin = testkit::admin_connection(&env.database).await;
    admin
        .batch_execute("CREATE SCHEMA ro; CREATE TABLE ro.t (n int)")
        .await
        .unwrap();
    let pool = platform::db::pool(&url, "ro", 1).await.unwrap();
    {
        // The one pooled connection's server stops accepting writes, as a
        // primary demoted to a standby does for sessions that stay open.
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute("SET default_transaction_read_only = on")
            .await
            .unwrap();
    }
    let write = |pool: pg::PgPool| async move {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("INSERT INTO t VALUES (1)")
            .execute(&mut conn)
            .await
    };
    let refused = write(pool.clone()).await.unwrap_err();
    assert!(
        pg::is_connection_error(&refused),
        "a read-only server is retried like a lost one: {refused}"
    );
    assert!(pg::must_verify_primary());
    // The next checkout finds the connection read-only, drops it and opens
    // a new one.
    write(pool.clone())
        .await
        .expect("a fresh connection accepts the write");
}
