//! The server's image path: header dimensions, then decode under the pixel limit, then the
//! model's preprocessing. Any bytes give a tensor or a `PreprocessError`, and nothing above
//! the limit is decoded.
#![no_main]

use htg_retrieval::preprocess::{decode_with_limit, dimensions};
use libfuzzer_sys::fuzz_target;

/// Small, so the fuzzer spends its time on parsing rather than on big allocations.
const MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok((w, h)) = dimensions(data) else {
        return;
    };
    match decode_with_limit(data, MAX_PIXELS) {
        Ok(img) => {
            assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS);
            assert!(u64::from(img.width()) * u64::from(img.height()) <= MAX_PIXELS);
            // The colour flattening every embedder input goes through.
            let rgb = htg_retrieval::preprocess::rgb_on_white(&img);
            assert_eq!(rgb.dimensions(), (img.width(), img.height()));
        }
        Err(_) => {}
    }
});
