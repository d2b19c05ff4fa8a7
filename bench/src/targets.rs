//! Every target the figures are held to, in one table, and what the results
//! of a run say of each. The README's table is generated from the same
//! results by [`readme_table`].

use serde_json::{Map, Value, json};

/// How a measured value is compared with its goal.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

/// One target: a figure (the JSON key of its measured value), its goal and
/// the unit the goal is written in.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub figure: &'static str,
    pub key: &'static str,
    pub goal: Goal,
    pub unit: &'static str,
}

pub const TARGETS: &[Target] = &[
    Target {
        figure: "P1 PlaceOrder ÷ raw client, 32 clients",
        key: "p1_ratio_32",
        goal: Goal::AtLeast(0.8),
        unit: "",
    },
    Target {
        figure: "P1 raw client ÷ pgbench, 32 clients",
        key: "p1_raw_pgbench_ratio_32",
        goal: Goal::AtLeast(0.8),
        unit: "",
    },
    Target {
        figure: "P2 relay drain ÷ raw publish",
        key: "p2_ratio",
        goal: Goal::AtLeast(0.9),
        unit: "",
    },
    Target {
        figure: "P3 commit → points p50, at half of P7",
        key: "p3_p50_floor_ratio",
        goal: Goal::AtMost(3.0),
        unit: "× hop floor",
    },
    Target {
        figure: "P3 commit → points p99, at half of P7",
        key: "p3_p99_floor_ratio",
        goal: Goal::AtMost(10.0),
        unit: "× hop floor",
    },
    Target {
        figure: "P4 consumer apply ÷ raw consume + ack",
        key: "p4_ratio",
        goal: Goal::AtLeast(0.5),
        unit: "",
    },
    Target {
        figure: "P5 commit → APPROVED on WatchOrder p50, at half of P7",
        key: "p5_p50_floor_ratio",
        goal: Goal::AtMost(6.0),
        unit: "× hop floor",
    },
    Target {
        figure: "P6 RSS idle, largest service",
        key: "p6_rss_idle_mb",
        goal: Goal::Below(30.0),
        unit: "MiB",
    },
    Target {
        figure: "P6 RSS under load, largest service",
        key: "p6_rss_load_mb",
        goal: Goal::Below(100.0),
        unit: "MiB",
    },
    Target {
        figure: "P6 process start → SERVING, slowest service",
        key: "p6_start_to_serving_ms",
        goal: Goal::Below(1000.0),
        unit: "ms",
    },
    Target {
        figure: "P7 whole-system capacity ÷ ceiling",
        key: "p7_ratio",
        goal: Goal::AtLeast(0.6),
        unit: "",
    },
];

impl Target {
    /// "≥ 0.8", "≤ 3 × hop floor", "< 30 MiB".
    pub fn goal_text(&self) -> String {
        let (sign, value) = match self.goal {
            Goal::AtLeast(v) => ("≥", v),
            Goal::AtMost(v) => ("≤", v),
            Goal::Below(v) => ("<", v),
        };
        let value = number(value);
        if self.unit.is_empty() {
            format!("{sign} {value}")
        } else {
            format!("{sign} {value} {}", self.unit)
        }
    }

    /// The measured value, if the part that measures it ran.
    pub fn measured(&self, results: &Map<String, Value>) -> Option<f64> {
        results.get(self.key).and_then(Value::as_f64)
    }

    /// Met, not met, or not measured (`None`).
    pub fn met(&self, results: &Map<String, Value>) -> Option<bool> {
        let value = self.measured(results)?;
        Some(match self.goal {
            Goal::AtLeast(goal) => value >= goal,
            Goal::AtMost(goal) => value <= goal,
            Goal::Below(goal) => value < goal,
        })
    }

    fn status(&self, results: &Map<String, Value>) -> &'static str {
        match self.met(results) {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        }
    }
}

/// The target on `key`.
fn target(key: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.key == key)
}

/// Prints every target: measured, goal, met or not.
#[allow(clippy::print_stdout, reason = "the bench reports on stdout")]
pub fn print(results: &Map<String, Value>) {
    println!("\nTargets");
    for target in TARGETS {
        let measured = target
            .measured(results)
            .map_or_else(|| "-".to_owned(), number);
        println!(
            "{:<56} {measured:>8}   goal {:<16} {}",
            target.figure,
            target.goal_text(),
            target.status(results)
        );
    }
}

/// The `targets` entry of the JSON results: per figure its goal, measured
/// value and whether it was met (a figure not measured is not met).
pub fn json(results: &Map<String, Value>) -> Value {
    Value::Array(
        TARGETS
            .iter()
            .map(|target| {
                json!({
                    "figure": target.figure,
                    "key": target.key,
                    "goal": target.goal_text(),
                    "measured": target.measured(results),
                    "met": target.met(results).unwrap_or(false),
                    "status": target.status(results),
                })
            })
            .collect(),
    )
}

/// A number as the tables print it: thousands separated, at most two
/// decimals, no trailing zeros.
pub fn number(value: f64) -> String {
    let text = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.as_str()),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, format!(".{fraction}")),
        None => (digits, String::new()),
    };
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}{grouped}{fraction}")
}

/// One row of the README's table.
struct Row {
    figure: String,
    measured: String,
    baseline: String,
    ratio: String,
    /// The targets the row is judged by (their keys).
    targets: Vec<&'static str>,
}

/// The README's Performance table, in Markdown, from a run's results: every
/// figure with its baseline, ratio, target and whether it was met, then the
/// machine and the run.
pub fn readme_table(results: &Map<String, Value>) -> String {
    let get = |key: &str| results.get(key).and_then(Value::as_f64);
    let show = |key: &str, unit: &str| match get(key) {
        Some(v) if unit.is_empty() => number(v),
        Some(v) => format!("{} {unit}", number(v)),
        None => "–".to_owned(),
    };
    let p50_p99 = |p50: &str, p99: &str| match (get(p50), get(p99)) {
        (Some(a), Some(b)) => format!("p50 {} ms, p99 {} ms", number(a), number(b)),
        _ => "–".to_owned(),
    };
    let floor = || show("hop_floor_ms", "ms");
    let rate = get("p3_rate").map_or_else(|| "?".to_owned(), number);
    let mut rows = Vec::new();
    for clients in [1, 8, 32] {
        rows.push(Row {
            figure: format!(
                "P1 `PlaceOrder`, {clients} client{}",
                if clients == 1 { "" } else { "s" }
            ),
            measured: show(&format!("p1_orders_per_s_{clients}"), "orders/s"),
            baseline: format!(
                "raw {}, pgbench {}",
                show(&format!("p1_raw_orders_per_s_{clients}"), ""),
                show(&format!("p1_pgbench_per_s_{clients}"), "")
            ),
            ratio: show(&format!("p1_ratio_{clients}"), ""),
            targets: if clients == 32 {
                vec!["p1_ratio_32"]
            } else {
                vec![]
            },
        });
    }
    rows.push(Row {
        figure: "P1 raw client vs pgbench, 32 clients".into(),
        measured: show("p1_raw_orders_per_s_32", "orders/s"),
        baseline: format!("pgbench {}", show("p1_pgbench_per_s_32", "tx/s")),
        ratio: show("p1_raw_pgbench_ratio_32", ""),
        targets: vec!["p1_raw_pgbench_ratio_32"],
    });
    rows.push(Row {
        figure: "P1 whole system, 32 clients (closed loop)".into(),
        measured: format!(
            "{}; {} events queued at the end, drained {} ms later",
            show("p1_system_orders_per_s_32", "orders/s"),
            show("p1_system_queued_at_end", ""),
            show("p1_system_drain_ms", "")
        ),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec![],
    });
    rows.push(Row {
        figure: "P2 relay drain of an outbox backlog".into(),
        measured: show("p2_events_per_s", "events/s"),
        baseline: format!("raw publish {}", show("p2_raw_events_per_s", "")),
        ratio: show("p2_ratio", ""),
        targets: vec!["p2_ratio"],
    });
    rows.push(Row {
        figure: "Hop floor: insert commit + publish confirm, p50".into(),
        measured: format!(
            "{} ({} + {})",
            floor(),
            show("hop_floor_insert_p50_ms", "ms"),
            show("hop_floor_publish_p50_ms", "ms")
        ),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec![],
    });
    rows.push(Row {
        figure: format!("P3 commit → points, {rate} orders/s (half of P7)"),
        measured: p50_p99("p3_p50_ms", "p3_p99_ms"),
        baseline: format!("hop floor {}", floor()),
        ratio: format!(
            "{}, {}",
            show("p3_p50_floor_ratio", ""),
            show("p3_p99_floor_ratio", "")
        ),
        targets: vec!["p3_p50_floor_ratio", "p3_p99_floor_ratio"],
    });
    rows.push(Row {
        figure: "P3 the same, 100 orders/s".into(),
        measured: p50_p99("p3_steady_p50_ms", "p3_steady_p99_ms"),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec![],
    });
    rows.push(Row {
        figure: "P3 100 orders/s, NOTIFY off, 1 s poll".into(),
        measured: p50_p99("p3_poll_p50_ms", "p3_poll_p99_ms"),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec![],
    });
    rows.push(Row {
        figure: "P4 consumer apply (inbox + effect + ack)".into(),
        measured: show("p4_events_per_s", "events/s"),
        baseline: format!("raw consume + ack {}", show("p4_raw_events_per_s", "")),
        ratio: show("p4_ratio", ""),
        targets: vec!["p4_ratio"],
    });
    rows.push(Row {
        figure: format!("P5 commit → APPROVED on `WatchOrder`, {rate} orders/s"),
        measured: p50_p99("p5_p50_ms", "p5_p99_ms"),
        baseline: format!("hop floor {}", floor()),
        ratio: show("p5_p50_floor_ratio", ""),
        targets: vec!["p5_p50_floor_ratio"],
    });
    rows.push(Row {
        figure: "P5 the same, 100 orders/s".into(),
        measured: p50_p99("p5_steady_p50_ms", "p5_steady_p99_ms"),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec![],
    });
    rows.push(Row {
        figure: "P6 RSS idle / under load (largest service)".into(),
        measured: format!(
            "{} / {}",
            show("p6_rss_idle_mb", "MiB"),
            show("p6_rss_load_mb", "MiB")
        ),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec!["p6_rss_idle_mb", "p6_rss_load_mb"],
    });
    rows.push(Row {
        figure: "P6 process start → SERVING (slowest service)".into(),
        measured: show("p6_start_to_serving_ms", "ms"),
        baseline: String::new(),
        ratio: String::new(),
        targets: vec!["p6_start_to_serving_ms"],
    });
    rows.push(Row {
        figure: "P7 whole-system capacity (open loop, drained in 2 s)".into(),
        measured: show("p7_orders_per_s", "orders/s"),
        baseline: format!(
            "ceiling {} (k = {}, m = {})",
            show("p7_ceiling_per_s", ""),
            show("p7_k_transactions_per_order", ""),
            show("p7_m_deliveries_per_order", "")
        ),
        ratio: show("p7_ratio", ""),
        targets: vec!["p7_ratio"],
    });

    let mut table = String::from(
        "| Figure | Measured | Baseline | Ratio | Target | |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let targets: Vec<&Target> = row.targets.iter().filter_map(|k| target(k)).collect();
        let goal = targets
            .iter()
            .map(|t| t.goal_text())
            .collect::<Vec<_>>()
            .join("; ");
        let verdict = if targets.is_empty() {
            String::new()
        } else if targets.iter().any(|t| t.met(results).is_none()) {
            "not measured".to_owned()
        } else if targets.iter().all(|t| t.met(results) == Some(true)) {
            "met".to_owned()
        } else {
            "not met".to_owned()
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {goal} | {verdict} |\n",
            row.figure, row.measured, row.baseline, row.ratio
        ));
    }
    let machine = results
        .get("machine")
        .and_then(Value::as_str)
        .map_or("a machine not recorded", |m| {
            m.trim_start_matches("machine: ")
        });
    let command = if results.get("quick").and_then(Value::as_bool) == Some(true) {
        "make bench-quick"
    } else {
        "make bench"
    };
    let seconds = results
        .get("bench_seconds")
        .and_then(Value::as_f64)
        .map_or_else(|| "?".to_owned(), number);
    table.push_str(&format!(
        "\nGenerated from `target/bench/latest.json` of `{command}` ({seconds} s) on {machine}.\n"
    ));
    table
}

/// Where the generated table goes in the README.
pub const START_MARKER: &str = "<!-- bench-table:start -->";
pub const END_MARKER: &str = "<!-- bench-table:end -->";

/// `readme` with the text between the markers replaced by `table`.
pub fn splice(readme: &str, table: &str) -> anyhow::Result<String> {
    let start = readme
        .find(START_MARKER)
        .ok_or_else(|| anyhow::anyhow!("no {START_MARKER} in the README"))?
        + START_MARKER.len();
    let end = readme[start..]
        .find(END_MARKER)
        .ok_or_else(|| anyhow::anyhow!("no {END_MARKER} after {START_MARKER}"))?
        + start;
    Ok(format!("{}\n{}{}", &readme[..start], table, &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(12345.6), "12,346");
        assert_eq!(number(0.8), "0.8");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(24.66), "24.7");
        assert_eq!(number(-1234.0), "-1,234");
    }

    #[test]
    fn unmeasured_targets_are_not_met() {
        let mut results = Map::new();
        results.insert("p2_ratio".into(), 0.95.into());
        let entries = json(&results);
        let entries = entries.as_array().unwrap();
        let p2 = entries.iter().find(|e| e["key"] == "p2_ratio").unwrap();
        assert_eq!(p2["met"], true);
        let p7 = entries.iter().find(|e| e["key"] == "p7_ratio").unwrap();
        assert_eq!(p7["met"], false);
        assert_eq!(p7["status"], "not measured");
    }

    #[test]
    fn the_table_goes_between_the_markers() {
        let readme = format!("a\n{START_MARKER}\nold\n{END_MARKER}\nb\n");
        let spliced = splice(&readme, "new\n").unwrap();
        assert_eq!(
            spliced,
            format!("a\n{START_MARKER}\nnew\n{END_MARKER}\nb\n")
        );
        assert!(splice("no markers", "x").is_err());
    }
}
