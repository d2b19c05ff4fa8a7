//! P6: what a service costs: resident memory idle and under load, and the
//! time from process start to SERVING.

use std::time::{Duration, Instant};

use testkit::stack::{SERVICES, Stack};

/// Resident set size of a process, in MiB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The largest RSS among the services, in MiB.
pub fn max_rss_mb(stack: &Stack) -> f64 {
    SERVICES
        .iter()
        .filter_map(|s| stack.pid(s).and_then(rss_mb))
        .fold(0.0, f64::max)
}

/// Restarts each service (its database already migrated) and times process
/// start → SERVING; returns the slowest.
pub async fn start_to_serving(stack: &mut Stack) -> anyhow::Result<Duration> {
    let mut slowest = Duration::ZERO;
    for service in SERVICES {
        stack.kill(service).await?;
        let started = Instant::now();
        stack.spawn(service, service, &[], &[])?;
        stack.wait_serving_fast(service).await?;
        let took = started.elapsed();
        println!(
            "P6 {service}-service start → SERVING {:>8.0} ms",
            took.as_secs_f64() * 1e3
        );
        slowest = slowest.max(took);
    }
    Ok(slowest)
}
