//! Reading requests: bounded bodies, `multipart/form-data` (streamed through `actix-multipart`),
//! raw image bodies, search parameters. Everything a client can get wrong becomes an [`ApiError`] here, never a panic.

use crate::{IndexError, SearchOptions};
use actix_multipart::{Multipart, MultipartError};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage, HttpRequest};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::config::Config;
use super::error::ApiError;

pub use crate::index::MAX_EF;

/// Longest `label`, `path_prefix` or `path` accepted, in bytes.
pub const MAX_TEXT: usize = 4096;

/// Reads the whole body, refusing more than `limit` bytes with 413 (before reading, when the
/// `Content-Length` header already says so).
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: u64,
) -> Result<Bytes, ApiError> {
    if declared_length(req).is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    match payload.to_bytes_limited(max).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
        Err(_) => Err(ApiError::PayloadTooLarge { limit }),
    }
}

/// The `Content-Length` the client declared, if any.
fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone)]
pub struct Part {
    /// The form field name.
    pub name: String,
    /// The bytes.
    pub data: Bytes,
}

impl Part {
    /// The part as UTF-8 text (for `path` and `label` fields).
    pub fn text(&self) -> Result<String, ApiError> {
        let s = std::str::from_utf8(&self.data).map_err(|_| {
            ApiError::BadRequest(format!("form field `{}` is not UTF-8 text", self.name))
        })?;
        check_text(&self.name, s)?;
        Ok(s.to_string())
    }
}

/// Refuses empty, overlong or control-character text parameters.
fn check_text(name: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`{name}` must be 1 to {MAX_TEXT} bytes of text without control characters"
        )));
    }
    Ok(())
}

/// What a request body carries, by its content type.
pub enum Body {
    /// `multipart/form-data`, already split.
    Form(Vec<Part>),
    /// A raw image (`image/*` or `application/octet-stream`).
    Image(Bytes),
    /// `application/json`.
    Json(Bytes),
}

/// Reads the body and sorts it by content type; `accept_json` says whether the route takes
/// JSON. Other types get 415.
pub async fn read_typed(
    req: &HttpRequest,
    payload: web::Payload,
    config: &Config,
    accept_json: bool,
) -> Result<Body, ApiError> {
    let expected = if accept_json {
        "send application/json, multipart/form-data with `image` fields, or a raw image/* body"
    } else {
        "send multipart/form-data with an `image` field or a raw image/* body"
    };
    let mime = req
        .mime_type()
        .map_err(|_| ApiError::UnsupportedMediaType {
            got: header_str(req, header::CONTENT_TYPE),
            expected,
        })?;
    let Some(mime) = mime else {
        return Err(ApiError::UnsupportedMediaType {
            got: String::new(),
            expected,
        });
    };
    let essence = mime.essence_str().to_ascii_lowercase();
    if essence == "multipart/form-data" {
        // RFC 2046 caps a boundary at 70 characters; 200 leaves room for lax clients.
        mime.get_param("boundary")
            .filter(|b| !b.as_str().is_empty() && b.as_str().len() <= 200)
            .ok_or_else(|| {
                ApiError::BadRequest("multipart/form-data without a valid boundary".into())
            })?;
        let limit = config.max_upload_bytes;
        if declared_length(req).is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        return Ok(Body::Form(read_form(req.headers(), payload, limit).await?));
    }
    if mime.type_() == "image" || essence == "application/octet-stream" {
        return Ok(Body::Image(
            read_body(req, payload, config.max_upload_bytes).await?,
        ));
    }
    if accept_json && essence == "application/json" {
        return Ok(Body::Json(
            read_body(req, payload, config.max_upload_bytes).await?,
        ));
    }
    Err(ApiError::UnsupportedMediaType {
        got: essence,
        expected,
    })
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> String {
    req.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
        .unwrap_or_default()
}

/// Parses JSON, answering 400 with serde's reason (line and column included).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

/// Reads a `multipart/form-data` body (RFC 7578) into its parts with `actix-multipart`, while
/// streaming: the raw body is counted as it arrives and refused (413) past `limit` bytes, so
/// neither a huge part nor a preamble or header that never ends is buffered without bound.
pub async fn read_form<S>(
    headers: &header::HeaderMap,
    payload: S,
    limit: u64,
) -> Result<Vec<Part>, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
{
    check_boundary(headers)?;
    let mut seen = 0u64;
    // Set once the body has been read to its end (the parser can get no more input).
    let ended = std::rc::Rc::new(std::cell::Cell::new(false));
    let end = std::rc::Rc::clone(&ended);
    let bounded = payload
        .map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > limit {
                return Err(PayloadError::Overflow);
            }
            Ok(chunk)
        })
        .chain(futures_util::stream::poll_fn(move |_| {
            end.set(true);
            std::task::Poll::Ready(None)
        }));
    let mut form = Multipart::new(headers, bounded);
    let mut parts = Vec::new();
    while let Some(field) = unstalled(&mut form, &ended).await? {
        let mut field = field.map_err(|e| multipart_error(e, limit))?;
        let name = field.name().map(str::to_string).ok_or_else(|| {
            ApiError::BadRequest(
                "malformed multipart body: a part lacks `Content-Disposition: form-data; name=...`"
                    .into(),
            )
        })?;
        let mut data = BytesMut::new();
        while let Some(chunk) = unstalled(&mut field, &ended).await? {
            data.extend_from_slice(&chunk.map_err(|e| multipart_error(e, limit))?);
        }
        parts.push(Part {
            name,
            data: data.freeze(),
        });
    }
    Ok(parts)
}

/// Shortest multipart boundary accepted. RFC 2046 allows 1 to 70 characters, but
/// `actix-multipart` 0.7 slices out of range (a panic that takes the worker down) on some
/// bodies whose boundary is shorter than 4 (found by `fuzz/fuzz_targets/multipart.rs`);
/// clients generate 16 or more (browsers, curl, Python).
pub const MIN_BOUNDARY: usize = 4;

/// Refuses a multipart boundary the parser cannot take safely (see [`MIN_BOUNDARY`]).
fn check_boundary(headers: &header::HeaderMap) -> Result<(), ApiError> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<actix_web::mime::Mime>().ok())
        .and_then(|m| {
            m.get_param(actix_web::mime::BOUNDARY)
                .map(|b| b.as_str().len())
        });
    match boundary {
        Some(n) if n < MIN_BOUNDARY => Err(ApiError::BadRequest(format!(
            "malformed multipart body: the boundary has {n} characters, at least {MIN_BOUNDARY} are needed"
        ))),
        // A missing or unparsable boundary is the parser's to report.
        _ => Ok(()),
    }
}

/// `Pending` answers a multipart parser may give after the body has ended before it is
/// taken to be stuck: a parser that yields to the executor does so a few times at most.
const STALLED_POLLS: u32 = 1024;

/// The next item of `stream` (the form, or a part), or a 400 when the body has ended and the
/// parser keeps answering `Pending`: `actix-multipart` does so, forever, on some bodies that
/// end inside a part (found by `fuzz/fuzz_targets/multipart.rs`), which would hold a worker
/// for as long as the client likes.
async fn unstalled<S: Stream + Unpin>(
    stream: &mut S,
    ended: &std::cell::Cell<bool>,
) -> Result<Option<S::Item>, ApiError> {
    let mut stalled = 0u32;
    std::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
        std::task::Poll::Ready(item) => std::task::Poll::Ready(Ok(item)),
        std::task::Poll::Pending if ended.get() => {
            stalled += 1;
            if stalled > STALLED_POLLS {
                return std::task::Poll::Ready(Err(ApiError::BadRequest(
                    "malformed multipart body: it ends inside a part (no closing boundary)".into(),
                )));
            }
            // Nothing else will wake us: the body has ended.
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
        std::task::Poll::Pending => std::task::Poll::Pending,
    })
    .await
}

/// The body's overflow is 413; everything else the parser refuses is a malformed form, 400.
fn multipart_error(e: MultipartError, limit: u64) -> ApiError {
    match e {
        MultipartError::Payload(PayloadError::Overflow) => ApiError::PayloadTooLarge { limit },
        MultipartError::Payload(e) => ApiError::BadRequest(format!("cannot read the body: {e}")),
        e => ApiError::BadRequest(format!("malformed multipart body: {e}")),
    }
}

/// Search parameters, from the query string or a JSON body.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Neighbours wanted: 1..=`max_k` (default: the configured `default_k`).
    #[param(minimum = 1)]
    pub k: Option<usize>,
    /// HNSW candidate list size.
    #[param(minimum = 1, maximum = 10_000)]
    pub ef: Option<usize>,
    /// Brute force instead of HNSW.
    pub exact: Option<bool>,
    /// Only images with this label (1 to 4096 bytes, no control characters).
    #[param(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub label: Option<String>,
    /// Only images whose path starts with this (1 to 4096 bytes, no control characters).
    #[param(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub path_prefix: Option<String>,
    /// Only images at most this far from the query (squared L2 between unit vectors,
    /// 0..=4): fewer than `k` results, or none (`[]`, still a 200), when few are that close.
    #[param(minimum = 0.0, maximum = 4.0)]
    pub max_distance: Option<f32>,
}

/// An encoded image (PNG, JPEG, GIF, BMP, WebP), as a raw body or a form field: the
/// OpenAPI schema of image bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawImage(pub Vec<u8>);

/// The form of `POST /search`: exactly one `image` field.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageForm {
    /// The query image.
    pub image: RawImage,
}

/// The form of `POST /search/batch`: 1..=`max_batch_queries` `image` fields.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchForm {
    /// The query images, one field each, in order.
    #[schema(min_items = 1, max_items = 4096)]
    pub image: Vec<RawImage>,
}

/// The form of `POST /images`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddForm {
    /// The images to add (1..=`max_batch_queries`), one field each.
    #[schema(min_items = 1, max_items = 4096)]
    pub image: Vec<RawImage>,
    /// One label for all of them (1 to 4096 bytes, no control characters).
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub label: Option<String>,
    /// Paths to record, none or one per image in order (1 to 4096 bytes each).
    pub path: Option<Vec<TextField>>,
}

/// The pattern of text parameters: no control characters (what [`check_text`] refuses).
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// A text form field: 1 to [`MAX_TEXT`] bytes without control characters.
pub struct TextField(pub String);

/// Written out because utoipa's derive takes no length limits on a newtype.
impl utoipa::PartialSchema for TextField {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT))
            .pattern(Some(TEXT_PATTERN))
            .into()
    }
}

impl ToSchema for TextField {}

impl SearchParams {
    /// Checks ranges and returns `k` and the index's options.
    pub fn resolve(&self, config: &Config) -> Result<(usize, SearchOptions), ApiError> {
        let opts = SearchOptions {
            ef: self.ef,
            exact: self.exact.unwrap_or(false),
            label: self.label.clone(),
            path_prefix: self.path_prefix.clone(),
            max_distance: self.max_distance,
        };
        let k = opts
            .resolve(self.k.unwrap_or(config.default_k), config.max_k)
            .map_err(|e| match e {
                IndexError::Param(m) => ApiError::BadRequest(m),
                other => ApiError::Index(other),
            })?
            .k;
        for (name, v) in [("label", &self.label), ("path_prefix", &self.path_prefix)] {
            if let Some(v) = v {
                check_text(name, v)?;
            }
        }
        Ok((k, opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])], boundary: &str) -> Bytes {
        let mut b = Vec::new();
        for (name, file, data) in parts {
            b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(f) => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Bytes::from(b)
    }

    /// Drives [`read_form`] as a request would: headers, and the body in small chunks.
    fn parse(body: &Bytes, boundary: &str, limit: u64) -> Result<Vec<Part>, ApiError> {
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                .unwrap(),
        );
        let chunks: Vec<Result<Bytes, PayloadError>> = body
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        // Polled as an executor would: the parser may yield (waking itself) a bounded number
        // of times, and a hang would never finish.
        let mut fut = std::pin::pin!(read_form(
            &headers,
            futures_util::stream::iter(chunks),
            limit,
        ));
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..100_000 {
            if let std::task::Poll::Ready(r) = std::future::Future::poll(fut.as_mut(), &mut cx) {
                return r;
            }
        }
        panic!("read_form does not finish on an in-memory body")
    }

    /// `fuzz/fuzz_targets/multipart.rs` found this body (a part header cut by a stray byte
    /// and an image part that never ends): the parser kept asking to be polled again
    /// without reading on. Under a real runtime it must finish.
    #[actix_web::test]
    async fn a_fuzzed_form_that_never_finished_now_does() {
        let data: &[u8] = include_bytes!("../../tests/fuzz-regressions/multipart-d5e8868a.bin");
        let n = usize::from(data[0] % 70) + 1;
        let (boundary, body) = data[1..].split_at(n);
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_str(&format!(
                "multipart/form-data; boundary={}",
                std::str::from_utf8(boundary).unwrap()
            ))
            .unwrap(),
        );
        let chunks: Vec<Result<Bytes, PayloadError>> = body
            .chunks(13)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let parsed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read_form(&headers, futures_util::stream::iter(chunks), 1 << 16),
        )
        .await
        .expect("read_form finishes on an in-memory body");
        match parsed {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("multipart"), "{m}"),
            other => panic!("expected a malformed-form error, got {other:?}"),
        }
    }

    /// The fuzz target's second find: a 1-character boundary and a line `--` made
    /// `actix-multipart` slice out of range (a panic). Refused with a 400 instead.
    #[test]
    fn a_fuzzed_form_that_panicked_the_parser_is_refused() {
        let data: &[u8] = include_bytes!("../../tests/fuzz-regressions/multipart-6cfc6a4d.bin");
        let n = usize::from(data[0] % 70) + 1;
        let (boundary, body) = data[1..].split_at(n);
        let boundary = std::str::from_utf8(boundary).unwrap();
        match parse(&Bytes::copy_from_slice(body), boundary, 1 << 16) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("boundary"), "{m}"),
            other => panic!("expected a bad boundary, got {other:?}"),
        }
    }

    #[test]
    fn multipart_parts_keep_binary_data_intact() {
        let png: &[u8] = b"\x89PNG\r\n\x1a\n\r\n--not-the-boundary\r\n";
        let body = form(
            &[
                ("image", Some("a;b \"q\".png"), png),
                ("label", None, b"cat"),
                ("empty", None, b""),
            ],
            "XyZw",
        );
        let parts = parse(&body, "XyZw", 1 << 20).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].name, "image");
        assert_eq!(&parts[0].data[..], png);
        assert_eq!(parts[1].text().unwrap(), "cat");
        assert!(parts[2].data.is_empty());
        assert!(parts[2].text().is_err(), "empty text is refused");

        // A preamble before the first boundary is allowed.
        let mut with_preamble = b"ignored preamble\r\n".to_vec();
        with_preamble.extend_from_slice(&body);
        assert_eq!(
            parse(&Bytes::from(with_preamble), "XyZw", 1 << 20)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn malformed_multipart_is_a_bad_request() {
        let good = form(&[("image", Some("x.png"), b"abc")], "BnDy");
        let cut = good.slice(..good.len() - 10);
        let cases: Vec<Bytes> = vec![
            Bytes::from_static(b""),
            Bytes::from_static(b"--BnDy"),
            cut,
            Bytes::from_static(b"--BnDy\r\nContent-Type: text/plain\r\n\r\nx\r\n--BnDy--"),
            Bytes::from_static(
                b"--BnDy\r\nContent-Disposition: form-data; name=\"a\"\r\nx\r\n--BnDy--",
            ),
            Bytes::from_static(b"--BnDyjunk\r\n"),
        ];
        // Boundaries shorter than MIN_BOUNDARY are refused before the parser sees them.
        let short = form(&[("image", Some("x.png"), b"abc")], "B");
        assert!(
            matches!(parse(&short, "B", 1 << 20), Err(ApiError::BadRequest(m)) if m.contains("boundary has 1 characters"))
        );
        for body in cases {
            match parse(&body, "BnDy", 1 << 20) {
                Err(ApiError::BadRequest(m)) => {
                    assert!(m.contains("multipart") || m.contains("body"), "{m}")
                }
                other => panic!("{body:?}: expected BadRequest, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_form_is_bounded_while_streaming() {
        let big = vec![7u8; 5000];
        let body = form(&[("image", Some("x.png"), &big)], "BnDy");
        assert!(matches!(
            parse(&body, "BnDy", 4096),
            Err(ApiError::PayloadTooLarge { limit: 4096 })
        ));
        // A preamble that never reaches a boundary is refused at the limit, not buffered.
        let endless = Bytes::from(vec![b'a'; 10_000]);
        assert!(matches!(
            parse(&endless, "BnDy", 4096),
            Err(ApiError::PayloadTooLarge { .. })
        ));
        assert_eq!(parse(&body, "BnDy", 1 << 20).unwrap()[0].data.len(), 5000);
    }

    #[test]
    fn search_params_are_range_checked() {
        let c = Config::default();
        let (k, o) = SearchParams::default().resolve(&c).unwrap();
        assert_eq!(k, c.default_k);
        assert!(!o.exact);
        for d in [0.0, 1.0, 4.0] {
            let p = SearchParams {
                max_distance: Some(d),
                ..Default::default()
            };
            assert_eq!(p.resolve(&c).unwrap().1.max_distance, Some(d));
        }
        for p in [
            SearchParams {
                k: Some(0),
                ..Default::default()
            },
            SearchParams {
                k: Some(c.max_k + 1),
                ..Default::default()
            },
            SearchParams {
                ef: Some(MAX_EF + 1),
                ..Default::default()
            },
            SearchParams {
                label: Some("a\nb".into()),
                ..Default::default()
            },
            SearchParams {
                max_distance: Some(f32::NAN),
                ..Default::default()
            },
            SearchParams {
                max_distance: Some(-0.5),
                ..Default::default()
            },
            SearchParams {
                max_distance: Some(f32::INFINITY),
                ..Default::default()
            },
            SearchParams {
                max_distance: Some(4.5),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(p.resolve(&c), Err(ApiError::BadRequest(_))),
                "{p:?}"
            );
        }
    }
}
