//! The server's multipart reader (`actix-multipart` behind `input::read_form`): any body, any
//! boundary, fed in small chunks, must give parts or an `ApiError`, never a panic or a hang.
#![no_main]

use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use actix_web::web::Bytes;
use std::future::Future;
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
    // An in-memory stream is always ready, so the reader must finish. It may still return
    // `Pending` a few times after waking itself (actix-multipart yields between a field and
    // the next one), so poll it as an executor would, with a bound that only a hang reaches.
    let mut fut = std::pin::pin!(read_form(
        &headers,
        futures_util::stream::iter(chunks),
        1 << 16
    ));
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut polls = 0u32;
    let parsed = loop {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            break r;
        }
        polls += 1;
        assert!(polls < 100_000, "read_form does not finish on an in-memory body");
    };
    if let Ok(parts) = parsed {
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        assert!(total <= body.len(), "parts hold more bytes than the body");
    }
});
