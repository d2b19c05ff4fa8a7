//! Forward compatibility (docs/contracts.md): a consumer built from older
//! contracts receives events from a newer producer, whose messages carry
//! fields it does not know. It must apply them, once, as if those fields were
//! absent, and dead-letter nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use broker::{
    Amqp, Consumer, ConsumerConfig, Received, consumer::HandlerFuture, envelope, topology,
};
use dbps::{Event, customer::v1::CustomerRegistered};
use diesel::{QueryableByName, sql_types::Integer, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable},
};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

const SCHEMA: &str = "probe";
const WAIT: Duration = Duration::from_secs(20);

/// The probe's handler: records each registration with how often it was
/// applied and the fields it decoded.
fn record<'c>(
    conn: &'c mut AsyncPgConnection,
    received: Received<CustomerRegistered>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        diesel::sql_query(
            "INSERT INTO seen VALUES ($1, $2, $3, 1)
             ON CONFLICT (customer_id) DO UPDATE SET times = seen.times + 1",
        )
        .bind::<Text, _>(&received.event.customer_id)
        .bind::<Text, _>(&received.event.name)
        .bind::<Text, _>(&received.event.email)
        .execute(conn)
        .await?;
        Ok(())
    })
}

/// `event` as a newer producer would encode it: its known fields, then fields
/// of every wire type under numbers this build has never heard of.
fn with_unknown_fields(event: &CustomerRegistered) -> Vec<u8> {
    let mut bytes = event.encode_to_vec();
    // 100: a varint (e.g. a new int64 or enum field).
    encode_key(100, WireType::Varint, &mut bytes);
    encode_varint(42, &mut bytes);
    // 101: a length-delimited string.
    let text = b"a field from the future";
    encode_key(101, WireType::LengthDelimited, &mut bytes);
    encode_varint(text.len() as u64, &mut bytes);
    bytes.extend_from_slice(text);
    // 102: a nested message carrying a field of its own.
    let nested = {
        let mut nested = Vec::new();
        encode_key(1, WireType::SixtyFourBit, &mut nested);
        nested.extend_from_slice(&7u64.to_le_bytes());
        nested
    };
    encode_key(102, WireType::LengthDelimited, &mut bytes);
    encode_varint(nested.len() as u64, &mut bytes);
    bytes.extend_from_slice(&nested);
    // 536870911: the highest field number there is, a fixed32.
    encode_key(536_870_911, WireType::ThirtyTwoBit, &mut bytes);
    bytes.extend_from_slice(&9u32.to_le_bytes());
    // And one inside the known message's field order: unknown fields may come
    // anywhere, before known ones too.
    let mut leading = Vec::new();
    encode_key(99, WireType::Varint, &mut leading);
    encode_varint(1, &mut leading);
    leading.extend_from_slice(&bytes);
    leading
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_with_fields_this_consumer_does_not_know_is_applied_once() {
    let env = TestEnv::new().await;
    env.track_consumer("probe");
    let url = env.admin_url_of(&env.database);
    let mut admin = testkit::admin_connection(&env.database).await;
    admin
        .batch_execute(
            "CREATE SCHEMA probe;
             CREATE TABLE probe.seen (customer_id text PRIMARY KEY, name text NOT NULL,
                                      email text NOT NULL, times int NOT NULL);",
        )
        .await
        .unwrap();
    platform::db::migrate(&url, SCHEMA, vec![&broker::pg::MIGRATIONS])
        .await
        .unwrap();
    let pool = platform::db::pool(&url, SCHEMA, 4).await.unwrap();
    let amqp = Amqp::new(testkit::amqp_url(), "probe");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let mut config = ConsumerConfig::new(&env.prefix);
    config.delivery_limit = 3;
    config.max_retry_delay = Duration::from_millis(200);
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let consumer = Consumer::new("probe").on::<CustomerRegistered, _>(record);
    tokio::spawn(consumer.run(amqp.clone(), pool.clone(), config, shutdown.clone(), ready));
    is_ready.await.unwrap();

    let future = CustomerRegistered {
        customer_id: "from-the-future".into(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        registered_at: None,
    };
    let payload = with_unknown_fields(&future);
    // Sanity: the bytes do carry more than this build's message, and decode
    // to exactly its fields.
    assert!(payload.len() > future.encoded_len());
    assert_eq!(
        CustomerRegistered::decode(payload.as_slice()).unwrap(),
        future
    );

    // Published as the relay would, with the full envelope; then the same
    // message again (a redelivery), then a plain event behind them.
    let channel = amqp.channel().await.unwrap();
    let publish = |message_id: String, body: Vec<u8>| {
        let channel = channel.clone();
        let exchange = topology::exchange(&env.prefix, CustomerRegistered::SOURCE);
        async move {
            let mut headers = FieldTable::default();
            for (key, value) in [
                ("cloudEvents_specversion", "1.0"),
                ("cloudEvents_id", message_id.as_str()),
                ("cloudEvents_source", "/services/customer"),
                ("cloudEvents_type", CustomerRegistered::PROTO_NAME),
                ("cloudEvents_time", "2030-01-01T00:00:00.000000Z"),
            ] {
                headers.insert(key.into(), AMQPValue::LongString(value.into()));
            }
            channel
                .basic_publish(
                    exchange.into(),
                    CustomerRegistered::TYPE.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_message_id(message_id.into())
                        .with_content_type(envelope::CONTENT_TYPE.into())
                        .with_type(CustomerRegistered::TYPE.into())
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await
                .unwrap();
        }
    };
    let message_id = uuid::Uuid::now_v7().to_string();
    publish(message_id.clone(), payload.clone()).await;
    publish(message_id, payload).await;
    let marker = CustomerRegistered {
        customer_id: "marker".into(),
        ..Default::default()
    };
    publish(uuid::Uuid::now_v7().to_string(), marker.encode_to_vec()).await;

    #[derive(QueryableByName, Debug, PartialEq)]
    struct Seen {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        email: String,
        #[diesel(sql_type = Integer)]
        times: i32,
    }
    let seen = |customer_id: &'static str| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            diesel::sql_query("SELECT name, email, times FROM seen WHERE customer_id = $1")
                .bind::<Text, _>(customer_id)
                .get_result::<Seen>(&mut conn)
                .await
                .ok()
        }
    };
    // The queue is consumed in order: once the marker is applied, the
    // messages ahead of it have been handled.
    eventually("the marker to be applied", WAIT, || seen("marker")).await;
    assert_eq!(
        seen("from-the-future").await,
        Some(Seen {
            name: "Ada".into(),
            email: "ada@example.com".into(),
            times: 1,
        }),
        "applied once, with the fields it knows"
    );
    let dead_letters =
        broker::dlq::message_count(&amqp, &topology::dead_letter_queue(&env.prefix, "probe"))
            .await
            .unwrap();
    assert_eq!(dead_letters, Some(0), "nothing dead-lettered");
}
