//! The API's error type and the one place that maps errors to HTTP statuses.
//!
//! Every handler returns `Result<_, ApiError>`, and actix's own extractor failures are turned
//! into `ApiError` too (by the extractor error handlers installed in [`super::serve`]), so every error a client sees has the same shape:
//! `{"error": {"status": 400, "code": "bad_image", "message": "..."}}`.

use crate::{EmbedError, IndexError, PreprocessError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad JSON, parameter, multipart form or id.
    #[error("{0}")]
    BadRequest(String),
    /// An uploaded image cannot be used; `which` names the part when there are several.
    #[error("{which}{source}")]
    BadImage {
        /// `"image 2: "` in multi-image requests, empty otherwise.
        which: String,
        /// Decoder's reason.
        source: PreprocessError,
    },
    /// The body is above the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Limit in bytes.
        limit: u64,
    },
    /// The body's content type is not one this route reads.
    #[error("unsupported content type {got:?}: {expected}")]
    UnsupportedMediaType {
        /// Content type sent.
        got: String,
        /// What the route accepts.
        expected: &'static str,
    },
    /// Well-formed JSON whose values cannot be used (a non-finite vector component).
    #[error("{0}")]
    Unprocessable(String),
    /// The index refused the operation.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Inference failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// No such route or image.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method; `allow` lists the ones it has, for the
    /// `Allow` header RFC 9110 requires on a 405.
    #[error("method {method} is not allowed on this route (allowed: {allow})")]
    MethodNotAllowed {
        /// Method sent.
        method: String,
        /// The resource's methods, comma-separated (`GET, DELETE`).
        allow: String,
    },
    /// The request's images would decode to more pixels than `decode_budget_pixels`.
    #[error("the images of this request decode to {pixels} pixels, above the per-request budget of {budget}")]
    DecodeBudget {
        /// Pixels the request's images hold, from their headers.
        pixels: u64,
        /// The configured budget.
        budget: u64,
    },
    /// No key, or an unknown one, on a server that needs one.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key that does not allow this operation (a write with the read-only key).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with work in progress (a model swap already running).
    #[error("{0}")]
    Conflict(String),
    /// The disk is full: the write was not made (and nothing was acknowledged).
    #[error("insufficient storage, the write was not made: {0}")]
    InsufficientStorage(String),
    /// The inference queue is full: the client should retry later.
    #[error("the inference queue is full ({0} images waiting); retry later")]
    Overloaded(usize),
    /// The server is starting or shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// A server-side failure (I/O, a stopped thread).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error answer (also its schema in the OpenAPI document).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Status, stable code and a human-readable reason.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status, repeated for clients that only keep the body.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// Machine-readable code: branch on this, not on the message.
    pub code: ErrorCode,
    /// Why, in words (a decoder's reason, the range a parameter must be in...).
    pub message: String,
}

/// Every error code the API answers with. Serialised (and documented) in snake_case, so the
/// OpenAPI document's enum is this type and cannot drift from what is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: JSON, parameter, form or id.
    BadRequest,
    /// An image that cannot be decoded.
    BadImage,
    /// An image above `max_pixels`.
    ImageTooLarge,
    /// A body above `max_upload_bytes`.
    PayloadTooLarge,
    /// A content type the route does not read.
    UnsupportedMediaType,
    /// A vector with non-finite values.
    InvalidVector,
    /// A vector of another dimension than the index's.
    WrongDimension,
    /// No such route or image.
    NotFound,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// The request's images together exceed `decode_budget_pixels`.
    DecodeBudget,
    /// No valid API key.
    Unauthorized,
    /// The key does not allow this operation.
    Forbidden,
    /// Work in progress conflicts with the request.
    Conflict,
    /// The disk holding the index or uploads is full.
    InsufficientStorage,
    /// The index this server holds has no such operation (a snapshot of a Milvus collection).
    NotSupported,
    /// The inference queue is full.
    Overloaded,
    /// Starting or shutting down.
    Unavailable,
    /// The index failed.
    IndexError,
    /// Inference failed.
    InferenceFailed,
    /// Another server-side failure.
    Internal,
}

impl ErrorCode {
    /// The code as it appears in answers (`bad_image`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadImage => "bad_image",
            ErrorCode::ImageTooLarge => "image_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidVector => "invalid_vector",
            ErrorCode::WrongDimension => "wrong_dimension",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::DecodeBudget => "decode_budget",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::IndexError => "index_error",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ApiError {
    /// The body's message: the error's own line, with the runtime's cause after an inference
    /// failure (that variant keeps the cause as its source rather than in its text).
    pub fn message(&self) -> String {
        match self {
            ApiError::Embed(EmbedError::Run { source, .. }) => format!("{self}: {source}"),
            _ => self.to_string(),
        }
    }

    /// HTTP status and a stable machine-readable code: the single mapping for the whole API.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::BadImage { source, .. } => match source {
                PreprocessError::TooLarge { .. } => {
                    (StatusCode::BAD_REQUEST, ErrorCode::ImageTooLarge)
                }
                PreprocessError::Empty
                | PreprocessError::UnknownFormat
                | PreprocessError::Decode(_)
                | PreprocessError::Read { .. } => (StatusCode::BAD_REQUEST, ErrorCode::BadImage),
            },
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidVector)
            }
            ApiError::Index(e) if is_disk_full(e) => (
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
            ),
            ApiError::Index(e) => match e {
                IndexError::Dimension { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::WrongDimension)
                }
                IndexError::UnknownId(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
                IndexError::Param(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
                // The request was fine; this kind of index cannot do it.
                IndexError::NotSupported { .. } => {
                    (StatusCode::NOT_IMPLEMENTED, ErrorCode::NotSupported)
                }
                // A remote engine that does not answer: the client may retry later.
                IndexError::Unavailable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                }
                IndexError::ModelMismatch { .. }
                | IndexError::Io { .. }
                | IndexError::NotFound(_)
                | IndexError::Corrupt { .. }
                | IndexError::Engine(_)
                | IndexError::Ann(_)
                | IndexError::Wal(_)
                | IndexError::Location { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::IndexError)
                }
            },
            ApiError::Embed(e) => match e {
                EmbedError::Spec(_)
                | EmbedError::Load { .. }
                | EmbedError::Run { .. }
                | EmbedError::InputShape { .. }
                | EmbedError::OutputShape { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::InferenceFailed,
                ),
            },
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            ApiError::DecodeBudget { .. } => (StatusCode::BAD_REQUEST, ErrorCode::DecodeBudget),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::InsufficientStorage(_) => (
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
            ),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }

    /// A bad image, labelled with its position when a request carries several.
    pub fn bad_image(position: Option<usize>, source: PreprocessError) -> ApiError {
        ApiError::BadImage {
            which: position.map(|i| format!("image {i}: ")).unwrap_or_default(),
            source,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        let mut res = HttpResponse::build(status);
        match self {
            ApiError::Overloaded(_) => {
                res.insert_header(("Retry-After", "1"));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                res.insert_header((actix_web::http::header::ALLOW, allow.as_str()));
            }
            // RFC 9110, section 11.6.1: a 401 names the scheme it wants.
            ApiError::Unauthorized(_) => {
                res.insert_header((
                    actix_web::http::header::WWW_AUTHENTICATE,
                    "Bearer realm=\"htg\"",
                ));
            }
            _ => {}
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                status: status.as_u16(),
                code,
                message: self.message(),
            },
        })
    }
}

/// Whether an error, or any error it was caused by, is a full disk (`ENOSPC`) or an exhausted
/// quota (`EDQUOT`): the server answers 507 for those instead of 500, so a client knows the
/// write was refused for space and not lost.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io_is_disk_full(io) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// [`is_disk_full`] for one `io::Error`.
pub fn io_is_disk_full(e: &std::io::Error) -> bool {
    // 28 is ENOSPC and 122 EDQUOT on Linux.
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// A `web::block` closure that could not run (the blocking pool is gone or the closure
/// panicked): a server fault, never the client's.
impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(format!("blocking task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn every_error_answers_the_same_json_shape() {
        let cases = [
            (
                ApiError::BadRequest("k must be at least 1".into()),
                400,
                "bad_request",
            ),
            (
                ApiError::bad_image(Some(2), PreprocessError::Empty),
                400,
                "bad_image",
            ),
            (
                ApiError::bad_image(
                    None,
                    PreprocessError::TooLarge {
                        width: 9,
                        height: 9,
                        limit: 10,
                    },
                ),
                400,
                "image_too_large",
            ),
            (
                ApiError::PayloadTooLarge { limit: 5 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::Index(IndexError::Dimension {
                    got: 3,
                    expected: 8,
                }),
                422,
                "wrong_dimension",
            ),
            (ApiError::Index(IndexError::UnknownId(7)), 404, "not_found"),
            (ApiError::Overloaded(3), 503, "overloaded"),
            (ApiError::Unauthorized("no key".into()), 401, "unauthorized"),
            (ApiError::Forbidden("read-only".into()), 403, "forbidden"),
            (
                ApiError::DecodeBudget {
                    pixels: 10,
                    budget: 5,
                },
                400,
                "decode_budget",
            ),
            (
                ApiError::Index(IndexError::Io {
                    op: "writing",
                    path: "x".into(),
                    source: std::io::Error::from_raw_os_error(28),
                }),
                507,
                "insufficient_storage",
            ),
            (ApiError::Internal("disk".into()), 500, "internal"),
            (ApiError::Conflict("busy".into()), 409, "conflict"),
            (
                ApiError::Index(IndexError::NotSupported {
                    location: "milvus://h:1/c".into(),
                    operation: "snapshots",
                    reason: "Milvus backs itself up".into(),
                }),
                501,
                "not_supported",
            ),
        ];
        for (err, status, code) in cases {
            let res = err.error_response();
            assert_eq!(res.status().as_u16(), status, "{err}");
            let body = res.into_body().try_into_bytes().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["status"], status);
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["message"], err.to_string());
        }
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::BadImage,
            ErrorCode::ImageTooLarge,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::InvalidVector,
            ErrorCode::WrongDimension,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::DecodeBudget,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::Conflict,
            ErrorCode::InsufficientStorage,
            ErrorCode::NotSupported,
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::IndexError,
            ErrorCode::InferenceFailed,
            ErrorCode::Internal,
        ];
        for code in all {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert_eq!(
            ApiError::bad_image(Some(2), PreprocessError::Empty).to_string(),
            "image 2: empty file (0 bytes)"
        );
    }
}
