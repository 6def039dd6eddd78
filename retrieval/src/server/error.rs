//! The API's error type and the one place that maps errors to HTTP statuses.
//!
//! Every handler returns `Result<_, ApiError>`, and actix's own extractor failures are turned
//! into `ApiError` too (by the extractor error handlers installed in [`super::serve`]), so every error a client sees has the same shape:
//! `{"error": {"status": 400, "code": "bad_image", "message": "..."}}`.

use crate::{EmbedError, IndexError, PreprocessError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

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
    /// The route exists but not with this method.
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
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

/// The JSON body of every error answer.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    status: u16,
    code: &'a str,
    message: String,
}

impl ApiError {
    /// HTTP status and a stable machine-readable code: the single mapping for the whole API.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::BadImage { source, .. } => match source {
                PreprocessError::TooLarge { .. } => (StatusCode::BAD_REQUEST, "image_too_large"),
                PreprocessError::Empty
                | PreprocessError::UnknownFormat
                | PreprocessError::Decode(_)
                | PreprocessError::Read { .. } => (StatusCode::BAD_REQUEST, "bad_image"),
            },
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_vector"),
            ApiError::Index(e) => match e {
                IndexError::Dimension { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "wrong_dimension")
                }
                IndexError::UnknownId(_) => (StatusCode::NOT_FOUND, "not_found"),
                IndexError::Param(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                IndexError::ModelMismatch { .. }
                | IndexError::Io { .. }
                | IndexError::NotFound(_)
                | IndexError::Corrupt { .. }
                | IndexError::Engine(_)
                | IndexError::Wal(_)
                | IndexError::Location { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "index_error"),
            },
            ApiError::Embed(e) => match e {
                EmbedError::Spec(_)
                | EmbedError::Load { .. }
                | EmbedError::Run(_)
                | EmbedError::InputShape { .. }
                | EmbedError::OutputShape { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "inference_failed")
                }
            },
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
        if matches!(self, ApiError::Overloaded(_)) {
            res.insert_header(("Retry-After", "1"));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                status: status.as_u16(),
                code,
                message: self.to_string(),
            },
        })
    }
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
            (ApiError::Internal("disk".into()), 500, "internal"),
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
        assert_eq!(
            ApiError::bad_image(Some(2), PreprocessError::Empty).to_string(),
            "image 2: empty file (0 bytes)"
        );
    }
}
