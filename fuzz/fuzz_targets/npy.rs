//! The `.npy` reader behind datasets and `htg bench`: any bytes give a matrix whose shape
//! matches its data, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = htg_ann::npy::parse::<f32>(data) {
        assert_eq!(m.data.len(), m.rows * m.cols);
    }
    let _ = htg_ann::npy::parse::<i32>(data);
});
