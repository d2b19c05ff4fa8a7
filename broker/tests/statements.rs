//! `pg::statement` keeps its text prepared on the connection, which
//! `diesel::sql_query` does not: one round trip per call instead of two.

use broker::pg::statement;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer},
};
use diesel_async::RunQueryDsl;

#[derive(QueryableByName)]
struct Sum {
    #[diesel(sql_type = Integer)]
    sum: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    prepared: i64,
}

#[tokio::test]
async fn a_statement_is_prepared_once_per_connection_and_reused() {
    let mut conn = testkit::admin_connection("postgres").await;
    for n in 1..=3 {
        let row: Sum = statement("SELECT $1::int4 + $2::int4 + $1::int4 AS sum /* kept */")
            .bind::<Integer, _>(n)
            .bind::<Integer, _>(10)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.sum, 2 * n + 10);
        let row: Sum = diesel::sql_query("SELECT $1::int4 AS sum /* parsed each time */")
            .bind::<Integer, _>(n)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.sum, n);
    }
    let count = |pattern: &'static str| {
        statement("SELECT count(*) AS prepared FROM pg_prepared_statements WHERE statement LIKE $1")
            .bind::<diesel::sql_types::Text, _>(pattern)
    };
    let kept: Count = count("%/* kept */").get_result(&mut conn).await.unwrap();
    assert_eq!(
        kept.prepared, 1,
        "the statement is prepared once and reused"
    );
    let parsed: Count = count("%/* parsed each time */")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(parsed.prepared, 0, "sql_query is never kept prepared");
}
