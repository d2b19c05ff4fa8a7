//! Values the customer service accepts, and its one business rule.

use platform::fields::parse_text;

/// A customer's display name: 1 to 200 printable characters, trimmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerName(String);

impl CustomerName {
    /// Longest name, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Validates a name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        parse_text(raw, Self::MAX_CHARS).map(CustomerName)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, lower-cased so that uniqueness ignores case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Longest address (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// Validates an address.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        if trimmed.chars().any(platform::fields::is_unprintable) {
            return Err("must not contain control or invisible formatting characters".into());
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} bytes", Self::MAX_LEN));
        }
        let parsed: email_address::EmailAddress = trimmed
            .parse()
            .map_err(|_| "not a valid email address".to_owned())?;
        // Display names ("Ada <ada@x>") and domains without a dot are valid
        // RFC 5322 but not addresses we can use.
        if parsed.display_part() != "" || !parsed.domain().contains('.') {
            return Err("not a valid email address".into());
        }
        Ok(Email(parsed.email().to_lowercase()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Loyalty points an order earns: 10 % of its total in cents, rounded down
/// (a total of 9,999 cents earns 999 points). Never negative.
pub fn points_for(total_cents: i64) -> i64 {
    total_cents.max(0) / 10
}

/// What happened to an order, as far as its points go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointsEvent {
    /// `order.created`: credit this many points.
    Credit(i64),
    /// `order.rejected` / `order.cancelled`: take the credit back.
    Reverse,
}

/// A ledger entry: points credited for one order and whether they were
/// taken back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// Points the order earned ([`points_for`] its total); 0 while only
    /// its reversal has been seen.
    pub credited: i64,
    /// Whether the order was rejected or cancelled: the credit is taken
    /// back, or never moves the balance if the reversal came first.
    pub reversed: bool,
}

/// The order's new ledger entry and how much the balance moves, given its
/// entry so far (`None`: never seen). Exactly once and order-independent:
/// a replay changes nothing, a reversal before its credit makes the credit a
/// no-op, and a reversal never takes back more than was credited.
pub fn apply_points(entry: Option<Ledger>, event: PointsEvent) -> Option<(Ledger, i64)> {
    match (entry, event) {
        (None, PointsEvent::Credit(points)) => Some((
            Ledger {
                credited: points,
                reversed: false,
            },
            points,
        )),
        (None, PointsEvent::Reverse) => Some((
            Ledger {
                credited: 0,
                reversed: true,
            },
            0,
        )),
        // The reversal came first: remember the credit, move nothing.
        (
            Some(Ledger {
                credited: 0,
                reversed: true,
            }),
            PointsEvent::Credit(points),
        ) if points > 0 => Some((
            Ledger {
                credited: points,
                reversed: true,
            },
            0,
        )),
        (
            Some(Ledger {
                credited,
                reversed: false,
            }),
            PointsEvent::Reverse,
        ) => Some((
            Ledger {
                credited,
                reversed: true,
            },
            -credited,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_ten_percent_of_the_total_rounded_down() {
        assert_eq!(points_for(9_999), 999);
        assert_eq!(points_for(10_000), 1_000);
        assert_eq!(points_for(9), 0);
        assert_eq!(points_for(0), 0);
        assert_eq!(points_for(-50), 0);
        assert_eq!(points_for(i64::MAX), i64::MAX / 10);
    }

    #[test]
    fn points_move_once_per_order_whatever_the_order_of_events() {
        use PointsEvent::*;
        // credit, replayed credit, reversal, replayed reversal
        let (entry, delta) = apply_points(None, Credit(999)).unwrap();
        assert_eq!(delta, 999);
        assert_eq!(apply_points(Some(entry), Credit(999)), None);
        let (entry, delta) = apply_points(Some(entry), Reverse).unwrap();
        assert_eq!(
            (entry, delta),
            (
                Ledger {
                    credited: 999,
                    reversed: true
                },
                -999
            )
        );
        assert_eq!(apply_points(Some(entry), Reverse), None);
        assert_eq!(apply_points(Some(entry), Credit(999)), None);

        // reversal first: the late credit moves nothing, the balance never dips
        let (entry, delta) = apply_points(None, Reverse).unwrap();
        assert_eq!(delta, 0);
        let (entry, delta) = apply_points(Some(entry), Credit(500)).unwrap();
        assert_eq!(
            (entry, delta),
            (
                Ledger {
                    credited: 500,
                    reversed: true
                },
                0
            )
        );
        assert_eq!(apply_points(Some(entry), Reverse), None);
        assert_eq!(apply_points(Some(entry), Credit(500)), None);
    }

    #[test]
    fn emails_are_validated_and_lower_cased() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "Ada <ada@example.com>",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            CustomerName::parse("  Ada Lovelace ").unwrap().as_str(),
            "Ada Lovelace"
        );
        assert!(CustomerName::parse("").is_err());
        assert!(CustomerName::parse(&"x".repeat(201)).is_err());
        assert!(CustomerName::parse(&"é".repeat(200)).is_ok());
    }
}
