//! Isolation and transport security, with the real services and servers:
//! roles cannot reach other schemas, no superuser at run time, no secret in
//! the logs, mutual TLS for gRPC, and TLS with a client certificate for AMQP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use broker::amqp::Tls;
use dbps::{
    customer::v1::{
        GetCustomerRequest, RegisterCustomerRequest, customer_service_client::CustomerServiceClient,
    },
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        CancelOrderRequest, LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
    reporting::v1::{GetCustomerOverviewRequest, reporting_service_client::ReportingServiceClient},
};
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use testkit::{Running, TestEnv, certs::Pki, eventually};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

const WAIT: Duration = Duration::from_secs(30);
const SCHEMAS: [(&str, &str, &str); 4] = [
    ("customer_svc", "customers", "customers"),
    ("inventory_svc", "inventory", "products"),
    ("order_svc", "orders", "orders"),
    ("reporting_svc", "reporting", "order_view"),
];

/// Every log line of this test binary, at DEBUG, for [`logs_never_contain_passwords`].
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The four services on `env`'s database with these URLs.
async fn start_all(env: &TestEnv, password: Option<&str>, amqp: &str) -> Vec<Running> {
    use {
        customer_service as c, inventory_service as i, order_service as o, reporting_service as r,
    };
    let url = |role: &str| {
        let base = env.url_as(role, &env.database);
        match password {
            Some(password) => base.replacen(
                &format!("{role}:{role}@"),
                &format!("{role}:{password}@"),
                1,
            ),
            None => base,
        }
    };
    let customer = env
        .spawn(
            &c::SERVICE,
            env.config_with(&c::SERVICE, &url("customer_svc"), amqp, &[]),
            c::startup::build,
        )
        .await;
    let inventory = env
        .spawn(
            &i::SERVICE,
            env.config_with(&i::SERVICE, &url("inventory_svc"), amqp, &[]),
            i::startup::build,
        )
        .await;
    let order = env
        .spawn(
            &o::SERVICE,
            env.config_with(&o::SERVICE, &url("order_svc"), amqp, &[]),
            o::startup::build,
        )
        .await;
    let addr = |running: &Running| format!("http://{}", running.addr);
    let (ca, oa, ia) = (addr(&customer), addr(&order), addr(&inventory));
    let args = [
        "--customer-addr",
        &ca,
        "--order-addr",
        &oa,
        "--inventory-addr",
        &ia,
    ];
    let config: r::config::Config =
        env.config_with(&r::SERVICE, &url("reporting_svc"), amqp, &args);
    let reporting = env.spawn(&r::SERVICE, config, r::startup::build).await;
    vec![customer, inventory, order, reporting]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_is_denied_every_other_schema_and_its_outbox_and_inbox() {
    let env = TestEnv::new().await;
    let _running = start_all(&env, None, &testkit::amqp_url()).await;
    let mut denied = 0;
    for (role, own, _) in SCHEMAS {
        let mut conn = AsyncPgConnection::establish(&env.url_as(role, &env.database))
            .await
            .unwrap();
        for (_, schema, table) in SCHEMAS.iter().filter(|(_, schema, _)| *schema != own) {
            for table in [*table, "outbox", "inbox"] {
                for statement in [
                    format!("SELECT * FROM {schema}.{table}"),
                    format!("INSERT INTO {schema}.{table} DEFAULT VALUES"),
                    format!(
                        "UPDATE {schema}.{table} SET {} = NULL",
                        if table == "outbox" {
                            "published_at"
                        } else {
                            "ctid"
                        }
                    ),
                    format!("DELETE FROM {schema}.{table}"),
                ] {
                    let error = conn
                        .batch_execute(&statement)
                        .await
                        .expect_err(&statement)
                        .to_string();
                    assert!(
                        error.contains(&format!("permission denied for schema {schema}")),
                        "{role}: {statement}: {error}"
                    );
                    denied += 1;
                }
            }
        }
        // Nor can it create anything outside its schema.
        let error = conn
            .batch_execute("CREATE TABLE public.sneaky (x int)")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("permission denied"), "{role}: {error}");
    }
    assert_eq!(denied, 4 * 3 * 3 * 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_service_holds_a_superuser_connection_at_run_time() {
    let env = TestEnv::new().await;
    let running = start_all(&env, None, &testkit::amqp_url()).await;
    // Some work, so every pool and relay connection exists.
    let mut customers = CustomerServiceClient::new(running[0].channel());
    let request = RegisterCustomerRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    customers.register_customer(request).await.unwrap();

    #[derive(QueryableByName)]
    struct Session {
        #[diesel(sql_type = Text)]
        usename: String,
    }
    // Services open their pools, relays and consumers concurrently, and the
    // bootstrap's superuser session may still be closing: wait until exactly
    // the four service roles are connected. One held by a superuser at run
    // time would keep the set from ever matching.
    let expected = [
        "customer_svc",
        "inventory_svc",
        "order_svc",
        "reporting_svc",
    ];
    let mut admin = testkit::admin_connection(&env.database).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let sessions: Vec<Session> = diesel::sql_query(
            "SELECT usename::text FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .load(&mut admin)
        .await
        .unwrap();
        let mut roles: Vec<String> = sessions.into_iter().map(|s| s.usename).collect();
        roles.sort();
        roles.dedup();
        if roles == expected {
            break;
        }
        assert!(Instant::now() < deadline, "who is connected: {roles:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_never_contain_passwords() {
    let logs = captured();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_password, amqp_user, amqp_password) = (
        format!("db-{id}"),
        format!("dbps_logs_{}", &id[..8]),
        format!("mq-{id}"),
    );
    rabbitmqctl(&["add_user", &amqp_user, &amqp_password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &amqp_user, ".*", ".*", ".*"]);
    let amqp = format!("amqp://{amqp_user}:{amqp_password}@127.0.0.1:5672/%2f");

    let env = TestEnv::new().await;
    let running = start_all(&env, Some(&db_password), &amqp).await;
    let mut customers = CustomerServiceClient::new(running[0].channel());
    let mut inventory = InventoryServiceClient::new(running[1].channel());
    let mut orders = OrderServiceClient::new(running[2].channel());
    let mut reporting = ReportingServiceClient::new(running[3].channel());

    // Work, including failures: successes, bad input, missing things.
    let request = RegisterCustomerRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    let customer = customers
        .register_customer(request.clone())
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    assert_eq!(
        customers
            .register_customer(request)
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let product = CreateProductRequest {
        sku: "LOG".into(),
        name: "Log".into(),
        price_cents: 100,
        initial_stock: 5,
    };
    inventory.create_product(product).await.unwrap();
    let place = PlaceOrderRequest {
        customer_id: customer.clone(),
        lines: vec![LineItem {
            sku: "LOG".into(),
            quantity: 1,
        }],
        idempotency_key: "k".into(),
    };
    let order = eventually("the order to be accepted", WAIT, || {
        let (mut orders, place) = (orders.clone(), place.clone());
        async move { orders.place_order(place).await.ok().map(|o| o.into_inner()) }
    })
    .await;
    orders
        .cancel_order(CancelOrderRequest {
            order_id: order.order_id.clone(),
            reason: "".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        customers
            .get_customer(GetCustomerRequest {
                customer_id: "x".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    reporting
        .get_customer_overview(GetCustomerOverviewRequest {
            customer_id: customer,
        })
        .await
        .unwrap();
    drop(running);
    drop(env);
    rabbitmqctl(&["delete_user", &amqp_user]);

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("SERVING") && logs.contains("order placed"),
        "the capture works"
    );
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(&db_password) || line.contains(&amqp_password))
        .take(3)
        .collect();
    assert!(leaks.is_empty(), "secrets in the logs: {leaks:#?}");
}

fn tls_client(
    pki: &Pki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    config
}

async fn ask(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Code, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let request = GetCustomerRequest {
        customer_id: uuid::Uuid::now_v7().to_string(),
    };
    match CustomerServiceClient::new(channel)
        .get_customer(request)
        .await
    {
        Ok(_) => Ok(Code::Ok),
        Err(status) if status.code() == Code::NotFound => Ok(Code::NotFound),
        Err(status) => Err(format!("{status:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_clients_without_a_valid_certificate() {
    let env = TestEnv::new().await;
    let pki = Pki::generate(&std::env::temp_dir().join(format!("dbps-pki-{}", env.prefix)));
    let paths = [&pki.server_cert, &pki.server_key, &pki.ca, &pki.ca]
        .map(|p| p.to_string_lossy().into_owned());
    let args = [
        "--grpc-tls-cert",
        &paths[0],
        "--grpc-tls-key",
        &paths[1],
        "--grpc-tls-client-ca",
        &paths[2],
        "--grpc-tls-ca",
        &paths[3],
    ];
    use customer_service as c;
    let running = env
        .spawn(
            &c::SERVICE,
            env.config_in(&c::SERVICE, &env.database, &args),
            c::startup::build,
        )
        .await;

    // A client with a certificate the CA signed is served.
    let good = ask(
        running.addr,
        Some(tls_client(&pki, Some((&pki.client_cert, &pki.client_key)))),
    )
    .await;
    assert_eq!(good, Ok(Code::NotFound));
    // Without a certificate, with one from another CA, or in plain text: refused.
    assert!(
        ask(running.addr, Some(tls_client(&pki, None)))
            .await
            .is_err(),
        "no client certificate"
    );
    assert!(
        ask(
            running.addr,
            Some(tls_client(&pki, Some((&pki.rogue_cert, &pki.rogue_key))))
        )
        .await
        .is_err(),
        "rogue CA"
    );
    assert!(ask(running.addr, None).await.is_err(), "plain text");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// A TLS front for the local RabbitMQ that requires a client certificate the
/// test CA signed: the broker stays real, the TLS handshake is real.
async fn tls_front(pki: &Pki) -> u16 {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&pki.server_cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_with_a_client_certificate_connects_and_without_one_is_refused() {
    let pki = Pki::generate(
        &std::env::temp_dir().join(format!("dbps-pki-{}", uuid::Uuid::new_v4().simple())),
    );
    let port = tls_front(&pki).await;
    let url = format!("amqps://guest:guest@localhost:{port}/%2f");
    let ca_pem = std::fs::read_to_string(&pki.ca).unwrap();
    let identity = (
        std::fs::read(&pki.client_cert).unwrap(),
        std::fs::read(&pki.client_key).unwrap(),
    );

    let trusted = broker::Amqp::new(url.clone(), "tls-test").with_tls(Tls {
        ca_pem: Some(ca_pem.clone()),
        identity: Some(identity),
    });
    let channel = trusted
        .channel()
        .await
        .expect("amqps with a client certificate connects");
    let queue = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert!(queue.name().as_str().starts_with("amq.gen-"));
    trusted.close().await;

    let anonymous = broker::Amqp::new(url, "tls-test").with_tls(Tls {
        ca_pem: Some(ca_pem),
        identity: None,
    });
    assert!(
        anonymous.channel().await.is_err(),
        "without a client certificate the handshake fails"
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}
