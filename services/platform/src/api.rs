//! The edge of every gRPC API: one error type, one mapping to status codes.
//!
//! | failure                              | code                  |
//! |--------------------------------------|-----------------------|
//! | a field is invalid                   | `INVALID_ARGUMENT` + `google.rpc.BadRequest` |
//! | the thing asked for does not exist   | `NOT_FOUND`           |
//! | it exists already                    | `ALREADY_EXISTS`      |
//! | a business rule says no              | `FAILED_PRECONDITION` |
//! | the database cannot be reached       | `UNAVAILABLE`         |
//! | anything else (a bug)                | `INTERNAL`, opaque; details only in the log |

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use broker::TraceContext;
use diesel_async::pooled_connection::{PoolError, bb8::RunError};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One or more fields are invalid.
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A business rule refuses the request in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (the database) is unreachable; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Most field violations a status carries. Message and details travel in the
/// HTTP/2 trailers, which clients cap (16 KiB by default): a request with a
/// hundred bad lines must still get a clean INVALID_ARGUMENT.
pub const MAX_VIOLATIONS: usize = 20;
/// Most violations spelled out in the status message.
const SUMMARY_VIOLATIONS: usize = 5;

fn summary(violations: &[FieldViolation]) -> String {
    let mut text = violations
        .iter()
        .take(SUMMARY_VIOLATIONS)
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > SUMMARY_VIOLATIONS {
        text.push_str(&format!(
            "; and {} more",
            violations.len() - SUMMARY_VIOLATIONS
        ));
    }
    text
}

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        if broker::pg::is_connection_error(&error) {
            tracing::warn!(%error, "database unreachable");
            ApiError::Unavailable("the database is unavailable; retry later".into())
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl From<RunError> for ApiError {
    fn from(error: RunError) -> Self {
        tracing::warn!(%error, "no database connection");
        ApiError::Unavailable("the database is unavailable; retry later".into())
    }
}

impl From<PoolError> for ApiError {
    fn from(error: PoolError) -> Self {
        RunError::User(error).into()
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(mut violations) => {
                let message = format!("invalid request: {}", summary(&violations));
                if violations.len() > MAX_VIOLATIONS {
                    let more = violations.len() - (MAX_VIOLATIONS - 1);
                    violations.truncate(MAX_VIOLATIONS - 1);
                    violations.push(FieldViolation::new(
                        "",
                        format!("and {more} more violations"),
                    ));
                }
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::AlreadyExists(message) => Status::already_exists(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::Unavailable(message) => Status::unavailable(message),
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

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

    /// `Ok` if nothing was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into())
        }
    }
}

impl From<Violations> for ApiError {
    fn from(violations: Violations) -> Self {
        ApiError::InvalidArgument(violations.0)
    }
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

/// A protobuf timestamp.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// A validated `page_size` and `page_token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Rows to return.
    pub size: i64,
    /// Key of the last row of the previous page, if any.
    pub after: Option<String>,
}

impl Page {
    /// Validates `page_size` (0 = default, 1..=1000) and `page_token` (empty or
    /// one this service issued), recording violations.
    pub fn parse(violations: &mut Violations, page_size: i32, page_token: &str) -> Option<Page> {
        let size = match i64::from(page_size) {
            0 => Some(DEFAULT_PAGE_SIZE),
            n @ 1..=MAX_PAGE_SIZE => Some(n),
            _ => {
                violations.add(
                    "page_size",
                    format!("must be between 0 and {MAX_PAGE_SIZE}"),
                );
                None
            }
        };
        let after = if page_token.is_empty() {
            Some(None)
        } else {
            let decoded = URL_SAFE_NO_PAD
                .decode(page_token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if decoded.is_none() {
                violations.add("page_token", "not a token this service issued");
            }
            decoded.map(Some)
        };
        Some(Page {
            size: size?,
            after: after?,
        })
    }

    /// The token for the page after the one ending at `last_key`.
    pub fn token_after(last_key: &str) -> String {
        URL_SAFE_NO_PAD.encode(last_key)
    }

    /// `next_page_token` for a page of `rows` fetched with `size + 1` rows:
    /// trims the extra row and returns the token if there was one.
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> String) -> String {
        let limit = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|row| Page::token_after(&key(row)))
                .unwrap_or_default()
        } else {
            String::new()
        }
    }
}

/// The trace context of a request: the current span's when traces are on
/// (it already continues the caller's), else the caller's `traceparent`
/// metadata continued, else a new trace.
pub fn trace_context<T>(request: &Request<T>) -> TraceContext {
    if let Some(current) = TraceContext::from_current_span() {
        return current;
    }
    TraceContext::continue_or_start(
        request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_zero_means_default_and_out_of_range_is_a_violation() {
        let mut v = Violations::new();
        assert_eq!(
            Page::parse(&mut v, 0, ""),
            Some(Page {
                size: DEFAULT_PAGE_SIZE,
                after: None
            })
        );
        assert_eq!(Page::parse(&mut v, 1000, "").map(|p| p.size), Some(1000));
        assert!(v.is_empty());
        assert_eq!(Page::parse(&mut v, -1, ""), None);
        assert_eq!(Page::parse(&mut v, 1001, ""), None);
        assert_eq!(v.0.len(), 2);
        assert!(v.0.iter().all(|f| f.field == "page_size"));
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let mut v = Violations::new();
        let token = Page::token_after("SKU-1");
        assert_eq!(
            Page::parse(&mut v, 10, &token)
                .and_then(|p| p.after)
                .as_deref(),
            Some("SKU-1")
        );
        assert_eq!(Page::parse(&mut v, 10, "***"), None);
        assert_eq!(v.0.len(), 1);
        assert_eq!(v.0[0].field, "page_token");
    }

    #[test]
    fn invalid_argument_carries_bad_request_details() {
        let mut v = Violations::new();
        v.add("email", "not an email address");
        v.add("name", "must not be empty");
        let status = Status::from(ApiError::from(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["email", "name"]);
        assert!(status.message().contains("email: not an email address"));
    }

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
    fn many_violations_are_capped_so_the_trailers_stay_small() {
        let mut v = Violations::new();
        for i in 0..200 {
            v.add(
                format!("lines[{i}].quantity"),
                "must be between 1 and 10000",
            );
        }
        let status = Status::from(ApiError::from(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.len());
        assert_eq!(violations, Some(MAX_VIOLATIONS));
        assert!(
            status.message().ends_with("and 195 more"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 400);
    }

    #[test]
    fn invisible_characters_are_refused_in_text() {
        for text in ["a\u{202E}b", "a\u{200B}b", "\u{FEFF}a", "a\u{85}b"] {
            assert!(parse_text(text, 10).is_err(), "{text:?}");
        }
    }

    #[test]
    fn internal_errors_are_opaque() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!("secret detail")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
