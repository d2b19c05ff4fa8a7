//! Keeping passwords out of everything `dbps` prints.

/// `url` with its password, if any, replaced by `***`
/// (`postgres://order_svc:***@127.0.0.1:5432/dbps`).
pub fn redact(url: &str) -> String {
    match split(url) {
        Some(parts) if parts.password.is_some() => {
            format!("{}{}:***@{}", parts.scheme, parts.user, parts.location)
        }
        _ => url.to_owned(),
    }
}

/// The passwords of some URLs, to be blotted out of messages that might
/// quote them (an error from a driver, say).
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The passwords in `urls`. A password equal to its user name (the
    /// development defaults) is left alone: it is no secret, and blotting
    /// it out would hide which role failed.
    pub fn of<'a>(urls: impl IntoIterator<Item = &'a str>) -> Self {
        let mut passwords: Vec<String> = urls
            .into_iter()
            .filter_map(split)
            .filter_map(|parts| match parts.password {
                Some(password) if !password.is_empty() && password != parts.user => {
                    Some(password.to_owned())
                }
                _ => None,
            })
            .collect();
        // Longest first, so that no password is left half blotted out.
        passwords.sort_by_key(|password| std::cmp::Reverse(password.len()));
        passwords.dedup();
        Secrets(passwords)
    }

    /// `text` with every known password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, password| {
            text.replace(password, "***")
        })
    }
}

struct Parts<'a> {
    /// `scheme://`
    scheme: &'a str,
    user: &'a str,
    password: Option<&'a str>,
    /// Host, port, path and query.
    location: &'a str,
}

/// `scheme://[user[:password]@]location`; `None` without credentials.
fn split(url: &str) -> Option<Parts<'_>> {
    let start = url.find("://")? + 3;
    let (scheme, rest) = url.split_at(start);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let (credentials, location) = (&rest[..at], &rest[at + 1..]);
    let (user, password) = match credentials.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (credentials, None),
    };
    Some(Parts {
        scheme,
        user,
        password,
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_the_rest_is_kept() {
        assert_eq!(
            redact("postgres://order_svc:s3cr3t@db:5432/dbps?sslmode=require"),
            "postgres://order_svc:***@db:5432/dbps?sslmode=require"
        );
        assert_eq!(
            redact("amqp://guest:p@ss@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("postgres://db/x@y"), "postgres://db/x@y");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        let secrets = Secrets::of([
            "postgres://order_svc:hunter2@db/dbps",
            "amqp://guest:guest@rabbit/%2f",
            "postgres://db/dbps",
        ]);
        assert_eq!(
            secrets.scrub("auth failed for order_svc with hunter2 and guest"),
            "auth failed for order_svc with *** and guest"
        );
    }
}
