//! `page_size` and `page_token` of every `List…` call: keyset pages whose
//! token is the key of the previous page's last row.

use std::fmt::Display;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{ApiResult, fields::Violations};

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// A validated `page_size` and `page_token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<K> {
    /// Rows to return.
    pub size: i64,
    /// Key of the last row of the previous page, if any.
    pub after: Option<K>,
}

impl<K> Page<K> {
    /// Validates `page_size` (0 = default, 1..=1000) and `page_token` (empty,
    /// or one this service issued whose key `parse_key` accepts), recording
    /// violations.
    pub fn parse_with<E: Display>(
        violations: &mut Violations,
        page_size: i32,
        page_token: &str,
        parse_key: impl FnOnce(&str) -> Result<K, E>,
    ) -> Option<Page<K>> {
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
            let key = URL_SAFE_NO_PAD
                .decode(page_token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            match key {
                Some(key) => violations.check("page_token", parse_key(&key)).map(Some),
                None => {
                    violations.add("page_token", "not a token this service issued");
                    None
                }
            }
        };
        Some(Page {
            size: size?,
            after: after?,
        })
    }

    /// [`Page::parse_with`] for a call whose only fields are the page's:
    /// its violations as `INVALID_ARGUMENT`.
    pub fn from_request<E: Display>(
        page_size: i32,
        page_token: &str,
        parse_key: impl FnOnce(&str) -> Result<K, E>,
    ) -> ApiResult<Page<K>> {
        let mut violations = Violations::new();
        match Page::parse_with(&mut violations, page_size, page_token, parse_key) {
            Some(page) if violations.is_empty() => Ok(page),
            _ => Err(violations.into()),
        }
    }

    /// Rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch(&self) -> i64 {
        self.size + 1
    }

    /// The page of `rows` fetched with [`Page::fetch`] (the extra row
    /// trimmed) and its `next_page_token` (empty on the last page).
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        let limit = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() <= limit {
            return (rows, String::new());
        }
        rows.truncate(limit);
        let token = rows.last().map(|row| token_after(&key(row)));
        (rows, token.unwrap_or_default())
    }
}

/// The token for the page after the one ending at `last_key`.
pub fn token_after(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_key)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn text(key: &str) -> Result<String, Infallible> {
        Ok(key.to_owned())
    }

    #[test]
    fn page_size_zero_means_default_and_out_of_range_is_a_violation() {
        let mut v = Violations::new();
        assert_eq!(
            Page::parse_with(&mut v, 0, "", text),
            Some(Page {
                size: DEFAULT_PAGE_SIZE,
                after: None
            })
        );
        assert_eq!(
            Page::parse_with(&mut v, 1000, "", text).map(|p| p.size),
            Some(1000)
        );
        assert!(v.is_empty());
        assert_eq!(Page::parse_with(&mut v, -1, "", text), None);
        assert_eq!(Page::parse_with(&mut v, 1001, "", text), None);
        let violations = v.into_inner();
        assert_eq!(violations.len(), 2);
        assert!(violations.iter().all(|f| f.field == "page_size"));
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let mut v = Violations::new();
        let token = token_after("SKU-1");
        assert_eq!(
            Page::parse_with(&mut v, 10, &token, text)
                .and_then(|p| p.after)
                .as_deref(),
            Some("SKU-1")
        );
        assert_eq!(Page::parse_with(&mut v, 10, "***", text), None);
        let violations = v.into_inner();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "page_token");
    }

    #[test]
    fn a_token_whose_key_does_not_parse_is_a_violation() {
        let mut v = Violations::new();
        let token = token_after("not a number");
        let page = Page::parse_with(&mut v, 10, &token, |key| key.parse::<u32>());
        assert_eq!(page, None);
        assert_eq!(v.into_inner()[0].field, "page_token");
    }
}
