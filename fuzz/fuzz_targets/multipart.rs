//! The server's multipart reader (`actix-multipart` behind `input::read_form`): any body, any
//! boundary, fed in small chunks, must give parts or an `ApiError`, never a panic or a hang.
#![no_main]

use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use actix_web::web::Bytes;
use futures_util::future::FutureExt;
use htg_retrieval::server::input::read_form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: boundary length (1..=70); then the boundary; the rest is the body.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 70) + 1;
    if rest.len() < n {
        return;
    }
    let (boundary, body) = rest.split_at(n);
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    let Ok(value) = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, value);
    let chunks: Vec<Result<Bytes, actix_web::error::PayloadError>> = body
        .chunks(13)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let parsed = read_form(&headers, futures_util::stream::iter(chunks), 1 << 16).now_or_never();
    // An in-memory stream is always ready: the reader must finish, one way or the other.
    let parsed = parsed.expect("read_form finishes on an in-memory body");
    if let Ok(parts) = parsed {
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        assert!(total <= body.len(), "parts hold more bytes than the body");
    }
});
