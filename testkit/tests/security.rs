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
use tokio_rustls::rustls::{self, AlertDescription, ContentType};
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

/// Why a call did not get an answer: where it failed (`connect`: opening
/// the channel; `call`: the request, with its gRPC code), and every error
/// of the chain, outermost first, in their `Debug` and `Display` forms.
/// How a call through [`ask`] failed.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// No channel: nothing listening, or the connection failed while opening.
    Connect(String),
    /// The channel opened and the call failed: its code, whether the status
    /// stands for a transport failure (the connection broke under the call,
    /// no answer from the server) rather than one the server sent, and the
    /// status.
    Call {
        code: Code,
        transport: bool,
        status: String,
    },
}

async fn ask(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Code, Refusal> {
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
        .map_err(|e| Refusal::Connect(format!("{e:?}")))?;
    let request = GetCustomerRequest {
        customer_id: uuid::Uuid::now_v7().to_string(),
    };
    match CustomerServiceClient::new(channel)
        .get_customer(request)
        .await
    {
        Ok(_) => Ok(Code::Ok),
        Err(status) if status.code() == Code::NotFound => Ok(Code::NotFound),
        Err(status) => Err(Refusal::Call {
            code: status.code(),
            transport: std::error::Error::source(&status)
                .is_some_and(|source| source.is::<tonic::transport::Error>()),
            status: format!("{status:?}"),
        }),
    }
}

/// The TLS alert the peer ended the connection with, if `error` (or one of
/// its causes, or the error an `io::Error` among them wraps) says so.
fn tls_alert(error: &(dyn std::error::Error + 'static)) -> Option<AlertDescription> {
    let mut next = Some(error);
    while let Some(error) = next {
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(error), wrapped].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(alert)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return Some(*alert);
            }
        }
        next = error.source();
    }
    None
}

/// A TLS handshake with the server at `addr` (trusting the test CA, showing
/// `identity` if given), then a read, writing nothing: the server's verdict
/// on the client certificate comes after the client's last handshake message
/// (TLS 1.3), so the read is what sees a refusal. `Ok` if the server keeps
/// the connection open for 5 s.
async fn handshake(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls::pki_types::{
        CertificateDer, PrivateKeyDer, ServerName, pem::PemObject,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte)).await {
        Ok(read) => read.map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Whether the handshake was refused with `alert`.
fn refused_with(handshake: &std::io::Result<()>, alert: AlertDescription) -> bool {
    handshake
        .as_ref()
        .is_err_and(|error| tls_alert(error) == Some(alert))
}

/// What the server at `addr` answers to the HTTP/2 preface in plain text,
/// until it closes the connection (at most 5 s).
async fn plain_reply(addr: std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply)).await??;
    Ok(reply)
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
    let rogue = Some((pki.rogue_cert.as_path(), pki.rogue_key.as_path()));

    // A client with a certificate the CA signed is served.
    let good = ask(
        running.addr,
        Some(tls_client(&pki, Some((&pki.client_cert, &pki.client_key)))),
    )
    .await;
    assert_eq!(good, Ok(Code::NotFound));

    // Without a certificate, with one from another CA, or in plain text, a
    // gRPC client gets its connection accepted and then dropped: the call
    // fails in transport, without any answer from the server.
    for (what, tls) in [
        ("no client certificate", Some(tls_client(&pki, None))),
        ("rogue CA", Some(tls_client(&pki, rogue))),
        ("plain text", None),
    ] {
        let refused = ask(running.addr, tls).await;
        assert!(
            matches!(
                refused,
                Err(Refusal::Call {
                    transport: true,
                    ..
                })
            ),
            "{what}: {refused:?}"
        );
    }
    // Why is a race in that client (its request may be written into the
    // closing connection: a broken pipe); the handshake alone shows the
    // server's verdict, a TLS alert naming what is wrong.
    let refused = handshake(running.addr, &pki, None).await;
    assert!(
        refused_with(&refused, AlertDescription::CertificateRequired),
        "no client certificate: {refused:?}"
    );
    let refused = handshake(running.addr, &pki, rogue).await;
    assert!(
        refused_with(&refused, AlertDescription::UnknownCA),
        "rogue CA: {refused:?}"
    );
    // Plain text is answered in TLS: one alert record, fatal, decode_error.
    let reply = plain_reply(running.addr).await;
    let (alert, decode_error) = (
        u8::from(ContentType::Alert),
        u8::from(AlertDescription::DecodeError),
    );
    assert!(
        matches!(reply.as_deref(), Ok(&[record, 3, _, 0, 2, 2, what]) if record == alert && what == decode_error),
        "plain text: {reply:?}"
    );
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
    let refused = anonymous.channel().await.err();
    assert_eq!(
        refused.as_ref().and_then(|error| tls_alert(error)),
        Some(AlertDescription::CertificateRequired),
        "without a client certificate the front refuses the handshake: {refused:?}"
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}
