//! The edge of every gRPC API: one error type, one mapping to status codes,
//! and the one place a handler's result becomes a gRPC answer ([`respond`]).
//!
//! | failure                              | code                  |
//! |--------------------------------------|-----------------------|
//! | a field is invalid                   | `INVALID_ARGUMENT` + `google.rpc.BadRequest` |
//! | the thing asked for does not exist   | `NOT_FOUND`           |
//! | it exists already                    | `ALREADY_EXISTS`      |
//! | a business rule says no              | `FAILED_PRECONDITION` |
//! | the database cannot be reached       | `UNAVAILABLE`         |
//! | anything else (a bug)                | `INTERNAL`, opaque; details only in the log |

use diesel_async::pooled_connection::{PoolError, bb8::RunError};
use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::fields::Violations;

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
        if crate::db::is_connection_error(&error) {
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

impl From<Violations> for ApiError {
    fn from(violations: Violations) -> Self {
        ApiError::InvalidArgument(violations.into_inner())
    }
}

/// `NOT_FOUND` for a lookup that found nothing.
pub trait OrNotFound<T> {
    /// The value, or `NOT_FOUND`: "`what` not found".
    fn or_not_found(self, what: impl FnOnce() -> String) -> ApiResult<T>;
}

impl<T> OrNotFound<T> for Option<T> {
    fn or_not_found(self, what: impl FnOnce() -> String) -> ApiResult<T> {
        self.ok_or_else(|| ApiError::NotFound(format!("{} not found", what())))
    }
}

/// What a handler body returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// A handler body's result as the gRPC answer: every API method ends here,
/// so failures map to status codes in one place.
pub fn respond<T>(result: ApiResult<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// Implements a tonic service trait for an API type by handing each call to
/// the API's inherent method of the same name, a body returning
/// [`ApiResult`], and answering through [`respond`]. Attributes (such as
/// `#[tracing::instrument]`) go on the generated methods; associated types
/// (a streaming call's stream) are passed through.
///
/// ```ignore
/// platform::grpc_service! {
///     impl CustomerService for CustomerApi {
///         #[tracing::instrument(skip_all)]
///         fn get_customer(request: GetCustomerRequest) -> Customer;
///     }
/// }
/// ```
#[macro_export]
macro_rules! grpc_service {
    (
        impl $service:ident for $api:ty {
            $(type $assoc:ident = $assoc_ty:ty;)*
            $(
                $(#[$attr:meta])*
                fn $method:ident($request:ident: $message:ty) -> $answer:ty;
            )*
        }
    ) => {
        #[::tonic::async_trait]
        impl $service for $api {
            $(type $assoc = $assoc_ty;)*
            $(
                $(#[$attr])*
                async fn $method(
                    &self,
                    $request: ::tonic::Request<$message>,
                ) -> ::std::result::Result<::tonic::Response<$answer>, ::tonic::Status> {
                    $crate::respond(<$api>::$method(self, $request).await)
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn internal_errors_are_opaque() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!("secret detail")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
