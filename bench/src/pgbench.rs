//! The anchor of P1's raw baseline: `pgbench` writing the same rows as the
//! raw client (one order, as many lines as the bench's orders have, one
//! outbox row with a payload and headers of the same size, one transaction,
//! pipelined) into the same `bench_raw` tables, with the same client counts.
//! If the raw client is close to pgbench, the baseline is the best a client
//! can do with these rows, not a slow client.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use dbps::order::v1::{LineItem, PlaceOrderRequest};

use testkit::workload::World;

use crate::raw::RawOrder;

/// A UUID for this transaction: `now()` in microseconds (the same within the
/// transaction, rising like a version 7 UUID) and a random half from the
/// pgbench variable `var`.
fn uuid(var: &str) -> String {
    format!(
        "(lpad(to_hex((extract(epoch FROM now()) * 1e6)::bigint), 16, '0') || lpad(to_hex(:{var}::bigint), 16, '0'))::uuid"
    )
}

/// Writes the script next to `out` (the JSON results) and returns its path.
/// Orders have one line or two, half each, of one to three units of one of
/// the world's SKUs, for one of its customers, as [`testkit::workload::Orders`]
/// makes them.
pub fn script(out: &Path, world: &World) -> anyhow::Result<PathBuf> {
    let order_id = uuid("order_key");
    let event_id = uuid("event_key");
    // Payloads of the size the raw client writes for a one- and a two-line
    // order.
    let sample = |lines: usize| -> anyhow::Result<String> {
        let request = PlaceOrderRequest {
            customer_id: world.customers[0].clone(),
            lines: world
                .products
                .iter()
                .take(lines)
                .map(|product| LineItem {
                    sku: product.sku.clone(),
                    quantity: 1,
                })
                .collect(),
            idempotency_key: String::new(),
        };
        let payload = RawOrder::new(&request)?.payload;
        Ok(payload.iter().map(|b| format!("{b:02x}")).collect())
    };
    let line = |no: u32| format!("({order_id}, {no}, 'BENCH-' || :sku{no}, :quantity{no}, 100)");
    let outbox = |payload: &str| {
        format!(
            "INSERT INTO bench_raw.outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ({event_id}, 'order', {order_id}::text, 'order.created', '\\x{payload}'::bytea, \
             jsonb_build_object('ce-specversion', '1.0', 'ce-id', {event_id}::text, 'ce-source', '/services/order', \
             'ce-type', 'order.v1.OrderCreated', 'ce-time', '2026-01-01T00:00:00.000000Z', 'ce-subject', {order_id}::text, \
             'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'));"
        )
    };
    let lines_insert = "INSERT INTO bench_raw.order_lines (order_id, line_no, sku, quantity, unit_price_cents) VALUES";
    let skus = world.products.len();
    let customers = world.customers.len();
    let text = format!(
        "\\set order_key random(1, 4611686018427387903)
\\set event_key random(1, 4611686018427387903)
\\set customer random(1, {customers})
\\set two random(0, 1)
\\set sku0 random(0, {last_sku})
\\set sku1 (:sku0 + 1 + random(0, {skus_but_one})) % {skus}
\\set quantity0 random(1, 3)
\\set quantity1 random(1, 3)
\\set total (:quantity0 + :two * :quantity1) * 100
\\startpipeline
BEGIN;
INSERT INTO bench_raw.orders (order_id, customer_id, status, total_cents) VALUES ({order_id}, lpad(to_hex(:customer::bigint), 32, '0')::uuid, 'PENDING', :total);
\\if :two
{lines_insert} {line0}, {line1};
{outbox2}
\\else
{lines_insert} {line0};
{outbox1}
\\endif
COMMIT;
\\endpipeline
",
        last_sku = skus - 1,
        skus_but_one = skus.saturating_sub(2),
        line0 = line(0),
        line1 = line(1),
        outbox1 = outbox(&sample(1)?),
        outbox2 = outbox(&sample(2)?),
    );
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let path = dir.join("p1.pgbench.sql");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs `pgbench -M prepared -n -c N -j N -T secs -f script` against `url`;
/// its transactions per second (without the initial connection time), or
/// `None` when pgbench is not installed.
pub async fn tps(
    url: &str,
    script: &Path,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Option<f64>> {
    let clients = clients.to_string();
    let seconds = duration.as_secs().max(1).to_string();
    let output = match tokio::process::Command::new("pgbench")
        .args(["-M", "prepared", "-n", "-c", &clients, "-j", &clients])
        .args(["-T", &seconds, "-f"])
        .arg(script)
        .arg(url)
        .output()
        .await
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("P1 pgbench not found on PATH: no pgbench anchor");
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}): {}{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_tps(&stdout)
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("no tps line in pgbench's output: {stdout}"))
}

/// `tps = 1234.567890 (without initial connection time)`.
fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|line| line.starts_with("tps = ") && line.contains("without initial connection"))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|number| number.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::parse_tps;

    #[test]
    fn reads_the_tps_line() {
        let output = "number of failed transactions: 0 (0.000%)\n\
                      latency average = 11.003 ms\n\
                      initial connection time = 139.649 ms\n\
                      tps = 727.078189 (without initial connection time)\n";
        assert_eq!(parse_tps(output), Some(727.078189));
        assert_eq!(parse_tps("tps = 1"), None);
    }
}
