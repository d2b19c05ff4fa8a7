//! Orders as the order service understands them.

use std::collections::{HashMap, HashSet};

use dbps::order::v1::PlaceOrderRequest;
use platform::{
    Violations,
    fields::{parse_id, parse_sku, parse_text},
};
use uuid::Uuid;

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units of one SKU in one order.
pub const MAX_QUANTITY: i32 = 10_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Accepted; waiting for inventory.
    Pending,
    /// Stock reserved.
    Approved,
    /// Stock could not be reserved.
    Rejected,
    /// Cancelled by a client.
    Cancelled,
}

impl OrderStatus {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Approved => "APPROVED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    /// Reads the database spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PENDING" => OrderStatus::Pending,
            "APPROVED" => OrderStatus::Approved,
            "REJECTED" => OrderStatus::Rejected,
            "CANCELLED" => OrderStatus::Cancelled,
            _ => return None,
        })
    }

    /// No event can move the order any more (APPROVED still can be cancelled).
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled)
    }

    /// What `transition` does to an order in this status. Replays and
    /// out-of-order arrivals land on [`Decision::AlreadyThere`] or
    /// [`Decision::Refuse`] and change nothing.
    pub fn decide(self, transition: Transition) -> Decision {
        use OrderStatus::*;
        match (self, transition) {
            (Pending, Transition::StockReserved) => Decision::Move(Approved),
            (Pending, Transition::StockRejected) => Decision::Move(Rejected),
            (Pending | Approved, Transition::Cancel) => Decision::Move(Cancelled),
            (Approved, Transition::StockReserved) | (Rejected, Transition::StockRejected) => {
                Decision::AlreadyThere
            }
            _ => Decision::Refuse,
        }
    }
}

/// What can happen to an order after it was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Inventory reserved every line.
    StockReserved,
    /// Inventory could not reserve the stock.
    StockRejected,
    /// A client cancels.
    Cancel,
}

/// The outcome of a [`Transition`] for an order's current status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Move to this status.
    Move(OrderStatus),
    /// The transition already happened (a replay): nothing to do.
    AlreadyThere,
    /// Not allowed from the current status.
    Refuse,
}

/// Longest cancellation reason.
pub const MAX_REASON_CHARS: usize = 200;

/// Validates a cancellation reason: optional, at most 200 printable characters.
pub fn parse_reason(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Ok(String::new())
    } else {
        parse_text(raw, MAX_REASON_CHARS)
    }
}

/// One requested line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineItem {
    /// A valid SKU, on no other line of the order.
    pub sku: String,
    /// Units, 1 to [`MAX_QUANTITY`].
    pub quantity: i32,
}

/// A valid `PlaceOrder` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaceOrder {
    /// Who places the order.
    pub customer_id: Uuid,
    /// 1 to [`MAX_LINES`] lines, in request order.
    pub lines: Vec<LineItem>,
    /// The client's key, if it sent one: at most [`MAX_IDEMPOTENCY_KEY`]
    /// bytes, without control characters.
    pub idempotency_key: Option<String>,
}

impl PlaceOrder {
    /// Validates every field, naming each bad one (`lines[2].quantity`).
    pub fn parse(request: &PlaceOrderRequest) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        let customer_id = violations.check("customer_id", parse_id(&request.customer_id));
        if request.lines.is_empty() {
            violations.add("lines", "must have at least one line");
        } else if request.lines.len() > MAX_LINES {
            violations.add("lines", format!("must have at most {MAX_LINES} lines"));
        }
        let mut seen = HashSet::new();
        let mut lines = Vec::with_capacity(request.lines.len());
        for (i, line) in request.lines.iter().take(MAX_LINES).enumerate() {
            if let Some(sku) = violations.check(format!("lines[{i}].sku"), parse_sku(&line.sku))
                && !seen.insert(sku)
            {
                violations.add(format!("lines[{i}].sku"), "appears on more than one line");
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                violations.add(
                    format!("lines[{i}].quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                );
            }
            lines.push(LineItem {
                sku: line.sku.clone(),
                quantity: line.quantity,
            });
        }
        let key = &request.idempotency_key;
        if key.len() > MAX_IDEMPOTENCY_KEY {
            violations.add(
                "idempotency_key",
                format!("must be at most {MAX_IDEMPOTENCY_KEY} bytes"),
            );
        } else if key.chars().any(char::is_control) {
            violations.add("idempotency_key", "must not contain control characters");
        }
        match customer_id {
            Some(customer_id) if violations.is_empty() => Ok(PlaceOrder {
                customer_id,
                lines,
                idempotency_key: (!key.is_empty()).then(|| key.clone()),
            }),
            _ => Err(violations),
        }
    }
}

/// A line with its price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedLine {
    /// The requested line's SKU.
    pub sku: String,
    /// The requested line's units.
    pub quantity: i32,
    /// Price of one unit in the catalog replica, in cents.
    pub unit_price_cents: i64,
}

/// Prices `lines` from `prices` (SKU → cents). Lists the SKUs that have no
/// price. Totals cannot overflow: at most 100 lines × 10,000 units × 10^10
/// cents is far below `i64::MAX`.
pub fn price(
    lines: &[LineItem],
    prices: &HashMap<String, i64>,
) -> Result<(Vec<PricedLine>, i64), Vec<String>> {
    let missing: Vec<String> = lines
        .iter()
        .filter(|line| !prices.contains_key(&line.sku))
        .map(|line| line.sku.clone())
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let priced: Vec<PricedLine> = lines
        .iter()
        .map(|line| PricedLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_cents: prices.get(&line.sku).copied().unwrap_or_default(),
        })
        .collect();
    let total = priced
        .iter()
        .map(|line| i64::from(line.quantity) * line.unit_price_cents)
        .sum();
    Ok((priced, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbps::order::v1::LineItem as ProtoLine;

    fn request(customer_id: &str, lines: &[(&str, i32)]) -> PlaceOrderRequest {
        PlaceOrderRequest {
            customer_id: customer_id.into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| ProtoLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
            idempotency_key: String::new(),
        }
    }

    fn fields(result: Result<PlaceOrder, Violations>) -> String {
        let error = platform::ApiError::from(result.unwrap_err());
        error.to_string()
    }

    const CUSTOMER: &str = "0192f0c4-6c9b-7bde-b1d8-3c2a3f6e9a10";

    #[test]
    fn a_valid_request_parses() {
        let order = PlaceOrder::parse(&request(CUSTOMER, &[("A", 1), ("B", 10_000)])).unwrap();
        assert_eq!(order.lines.len(), 2);
        assert_eq!(order.idempotency_key, None);
    }

    #[test]
    fn each_bad_line_field_is_named_by_its_index() {
        let message = fields(PlaceOrder::parse(&request(
            "x",
            &[("A", 0), ("A", 1), ("", -3)],
        )));
        for field in [
            "customer_id",
            "lines[0].quantity",
            "lines[1].sku",
            "lines[2].sku",
            "lines[2].quantity",
        ] {
            assert!(
                message.contains(&format!("{field}:")),
                "{field} missing from {message}"
            );
        }
        assert!(fields(PlaceOrder::parse(&request(CUSTOMER, &[]))).contains("lines:"));
        let many: Vec<(String, i32)> = (0..101).map(|i| (format!("S{i}"), 1)).collect();
        let many: Vec<(&str, i32)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        assert!(fields(PlaceOrder::parse(&request(CUSTOMER, &many))).contains("lines:"));
    }

    #[test]
    fn lines_are_priced_and_unknown_skus_listed() {
        let prices = HashMap::from([("A".to_owned(), 4999), ("B".to_owned(), 1)]);
        let lines = vec![
            LineItem {
                sku: "A".into(),
                quantity: 2,
            },
            LineItem {
                sku: "B".into(),
                quantity: 1,
            },
        ];
        let (priced, total) = price(&lines, &prices).unwrap();
        assert_eq!(total, 9_999);
        assert_eq!(priced[0].unit_price_cents, 4999);
        let unknown = vec![
            LineItem {
                sku: "Z".into(),
                quantity: 1,
            },
            LineItem {
                sku: "A".into(),
                quantity: 1,
            },
        ];
        assert_eq!(price(&unknown, &prices).unwrap_err(), ["Z"]);
    }

    #[test]
    fn the_state_machine_moves_forward_only() {
        use Decision::*;
        use OrderStatus::*;
        use Transition::*;
        let table = [
            (Pending, StockReserved, Move(Approved)),
            (Pending, StockRejected, Move(Rejected)),
            (Pending, Cancel, Move(Cancelled)),
            (Approved, Cancel, Move(Cancelled)),
            (Approved, StockReserved, AlreadyThere),
            (Rejected, StockRejected, AlreadyThere),
            // A late reservation must not resurrect a cancelled order.
            (Cancelled, StockReserved, Refuse),
            (Cancelled, StockRejected, Refuse),
            (Cancelled, Cancel, Refuse),
            (Rejected, Cancel, Refuse),
            (Rejected, StockReserved, Refuse),
            (Approved, StockRejected, Refuse),
        ];
        for (from, transition, expected) in table {
            assert_eq!(
                from.decide(transition),
                expected,
                "{from:?} + {transition:?}"
            );
        }
    }

    #[test]
    fn reasons_are_optional_but_bounded() {
        assert_eq!(parse_reason("  ").as_deref(), Ok(""));
        assert_eq!(
            parse_reason(" changed my mind ").as_deref(),
            Ok("changed my mind")
        );
        assert!(parse_reason(&"x".repeat(201)).is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_database_spelling() {
        for status in [
            OrderStatus::Pending,
            OrderStatus::Approved,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("SHIPPED"), None);
    }
}
