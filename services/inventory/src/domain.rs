//! Values the inventory service accepts.

use platform::fields::parse_text;

/// Highest price, in cents (one hundred million in whole units).
pub const MAX_PRICE_CENTS: i64 = 10_000_000_000;
/// Most stock one request may add or remove, or start with.
pub const MAX_STOCK_CHANGE: i64 = 1_000_000_000;
/// Most stock a product may hold, so that sums can never overflow.
pub const MAX_STOCK: i64 = 1_000_000_000_000;

/// A product's display name: 1 to 200 printable characters, trimmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    /// Validates a name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        parse_text(raw, 200).map(ProductName)
    }

    /// The name.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Validates a price.
pub fn parse_price(cents: i64) -> Result<i64, String> {
    if (0..=MAX_PRICE_CENTS).contains(&cents) {
        Ok(cents)
    } else {
        Err(format!("must be between 0 and {MAX_PRICE_CENTS}"))
    }
}

/// Validates an initial stock.
pub fn parse_initial_stock(units: i64) -> Result<i64, String> {
    if (0..=MAX_STOCK_CHANGE).contains(&units) {
        Ok(units)
    } else {
        Err(format!("must be between 0 and {MAX_STOCK_CHANGE}"))
    }
}

/// Validates a stock adjustment: non-zero and bounded.
pub fn parse_delta(delta: i64) -> Result<i64, String> {
    if delta == 0 {
        Err("must not be zero".into())
    } else if !(-MAX_STOCK_CHANGE..=MAX_STOCK_CHANGE).contains(&delta) {
        Err(format!(
            "must be between -{MAX_STOCK_CHANGE} and {MAX_STOCK_CHANGE}"
        ))
    } else {
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_stock_and_deltas_are_bounded() {
        assert_eq!(parse_price(0), Ok(0));
        assert!(parse_price(-1).is_err());
        assert!(parse_price(MAX_PRICE_CENTS + 1).is_err());
        assert_eq!(parse_initial_stock(10), Ok(10));
        assert!(parse_initial_stock(-1).is_err());
        assert!(parse_delta(0).is_err());
        assert!(parse_delta(i64::MIN).is_err());
        assert_eq!(parse_delta(-5), Ok(-5));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(ProductName::parse(" Book ").unwrap().into_inner(), "Book");
        assert!(ProductName::parse("").is_err());
        assert!(ProductName::parse(&"x".repeat(201)).is_err());
    }
}
