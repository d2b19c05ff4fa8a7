//! Request fields: collecting every violation of a request, the formats the
//! services agree on (IDs, SKUs, free text), and timestamps on the way out.

use tonic_types::FieldViolation;

/// Collects every invalid field of a request, so a client learns all of them
/// at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// The value of a parse, or `None` after recording its error for `field`.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        parsed: Result<T, E>,
    ) -> Option<T> {
        parsed
            .map_err(|error| self.add(field, error.to_string()))
            .ok()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations recorded.
    pub fn into_inner(self) -> Vec<FieldViolation> {
        self.0
    }
}

/// The value of a request's one field, or `INVALID_ARGUMENT` naming it.
pub fn field<T, E: std::fmt::Display>(name: &str, parsed: Result<T, E>) -> crate::ApiResult<T> {
    parsed.map_err(|error| crate::ApiError::invalid(name, error.to_string()))
}

/// Parses an ID field: a UUID in its canonical text form.
pub fn parse_id(text: &str) -> Result<uuid::Uuid, &'static str> {
    if text.is_empty() {
        return Err("is required");
    }
    uuid::Uuid::try_parse(text).map_err(|_| "must be a UUID")
}

/// Longest SKU.
pub const MAX_SKU_LEN: usize = 64;

/// Parses a SKU: 1 to 64 of `A-Z a-z 0-9 - _ .`, the format every service
/// agrees on (see `inventory.v1.CreateProductRequest`).
pub fn parse_sku(text: &str) -> Result<&str, String> {
    if text.is_empty() {
        Err("is required".into())
    } else if text.len() > MAX_SKU_LEN {
        Err(format!("must be at most {MAX_SKU_LEN} characters"))
    } else if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Err("may contain only A-Z, a-z, 0-9, '-', '_' and '.'".into())
    } else {
        Ok(text)
    }
}

/// Checks a human-readable text field: not blank, at most `max_chars`
/// characters, no control characters. Returns it trimmed.
pub fn parse_text(text: &str, max_chars: usize) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        Err("must not be empty".into())
    } else if trimmed.chars().count() > max_chars {
        Err(format!("must be at most {max_chars} characters"))
    } else if trimmed.chars().any(is_unprintable) {
        Err("must not contain control or invisible formatting characters".into())
    } else {
        Ok(trimmed.to_owned())
    }
}

/// Control characters, and the invisible ones that reorder or hide text
/// (zero-width, bidirectional overrides, byte-order mark).
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The time a protobuf timestamp names, if it is one.
pub fn from_timestamp(
    timestamp: Option<&prost_types::Timestamp>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let timestamp = timestamp?;
    chrono::DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// A protobuf timestamp.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_uuids_and_texts_must_be_printable_and_bounded() {
        assert_eq!(parse_id(""), Err("is required"));
        assert_eq!(parse_id("42"), Err("must be a UUID"));
        assert!(parse_id("0192f0c4-6c9b-7bde-b1d8-3c2a3f6e9a10").is_ok());
        assert_eq!(parse_text("  Ada  ", 5).as_deref(), Ok("Ada"));
        assert!(parse_text("   ", 5).is_err());
        assert!(parse_text("Ada Lovelace", 5).is_err());
        assert!(parse_text("Ada\u{0}", 5).is_err());
        assert_eq!(parse_text("ééééé", 5).as_deref(), Ok("ééééé"));
        assert_eq!(parse_sku("BOOK-1_a.2"), Ok("BOOK-1_a.2"));
        for bad in ["", "a b", "ü", "a/b", &"x".repeat(65)] {
            assert!(parse_sku(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invisible_characters_are_refused_in_text() {
        for text in ["a\u{202E}b", "a\u{200B}b", "\u{FEFF}a", "a\u{85}b"] {
            assert!(parse_text(text, 10).is_err(), "{text:?}");
        }
    }
}
