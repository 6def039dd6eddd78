//! Write-ahead log segments: any bytes give the entries of an intact prefix (and its length)
//! or a corruption error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((entries, valid)) =
        htg_retrieval::index::wal::parse_segment(Path::new("fuzz.log"), data)
    {
        assert!(valid <= data.len());
        let _ = entries.len();
    }
    let _ = htg_retrieval::index::wal::decode_payload(data);
});
