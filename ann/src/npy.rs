//! `.npy` reading and writing of 2-D `f32` and `i32` arrays through `ndarray-npy`: the files a
//! data set directory holds, so Rust and the Python peers read exactly the same bytes. This
//! module only maps them to [`Matrix`] and turns the crate's errors into one precise line.

use std::fs;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement, WritableElement, WriteNpyExt};

use crate::{io_err, AnnError};

/// A 2-D array read from a `.npy` file, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix<T> {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<T>,
}

impl<T> Matrix<T> {
    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Element types this module reads and writes.
pub trait Element: Copy + ReadableElement + WritableElement {
    /// NumPy's `descr` for the type, little-endian (for messages).
    const DESCR: &'static str;
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
}

impl Element for i32 {
    const DESCR: &'static str = "<i4";
}

/// Reads a 2-D array of `T`; any other dtype or rank is an error naming the file.
pub fn read<T: Element>(path: &Path) -> Result<Matrix<T>, AnnError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    parse(&bytes).map_err(|reason| AnnError::Npy {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the bytes of a `.npy` file (C or Fortran order; the result is row-major).
pub fn parse<T: Element>(bytes: &[u8]) -> Result<Matrix<T>, String> {
    check_header_len(bytes)?;
    let a = Array2::<T>::read_npy(bytes).map_err(|e| describe(e, T::DESCR))?;
    let (rows, cols) = a.dim();
    let data = if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    };
    Ok(Matrix { rows, cols, data })
}

/// Refuses a header whose declared length runs past the end of the bytes: `ndarray-npy`
/// allocates the declared length before reading it, so a 19-byte file claiming a 1 GiB
/// header (found by `fuzz/fuzz_targets/npy.rs`) would allocate 1 GiB.
fn check_header_len(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\x93NUMPY";

    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        // Not ours to judge: the reader names what is wrong.
        return Ok(());
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err("not a .npy file or truncated (header length)".into()),
    };
    if start + len > bytes.len() {
        return Err(format!(
            "the header claims {len} bytes but the file has {} after its prefix (truncated or not a .npy file)",
            bytes.len() - start
        ));
    }
    let depth = nesting_depth(&bytes[start..start + len]);
    if depth > MAX_HEADER_DEPTH {
        return Err(format!(
            "the header nests brackets {depth} deep; a 2-D array's header nests {MAX_HEADER_DEPTH} at most (not a .npy file of this kind)"
        ));
    }
    Ok(())
}

/// The deepest bracket nesting a header of a plain 2-D array can need: the dict and its shape
/// tuple, with room for a list-valued `descr`. `ndarray-npy` parses the header with a
/// backtracking grammar whose time grows exponentially with nesting: 28 `[` in a 128-byte
/// header ran past libFuzzer's 10 s limit (found by `fuzz/fuzz_targets/npy.rs`).
const MAX_HEADER_DEPTH: usize = 4;

/// The deepest nesting of `{`, `[` and `(` in `header`, outside quoted strings.
fn nesting_depth(header: &[u8]) -> usize {
    let (mut depth, mut deepest, mut quote) = (0usize, 0usize, None);
    for &c in header {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(c),
            (None, b'{' | b'[' | b'(') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, b'}' | b']' | b')') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// One line for each way a file can be wrong.
fn describe(e: ReadNpyError, expected: &str) -> String {
    match e {
        ReadNpyError::WrongDescriptor(v) => {
            let got = v.to_string();
            format!(
                "dtype {}, expected {expected}",
                got.trim_matches(['\'', '"'])
            )
        }
        ReadNpyError::WrongNdim(_, got) => {
            format!("shape has {got} dimensions, expected 2 (rows, columns)")
        }
        ReadNpyError::MissingData => "the data is shorter than the shape says (truncated)".into(),
        ReadNpyError::ExtraBytes(n) => format!("{n} bytes follow the data the shape describes"),
        ReadNpyError::ParseHeader(h) => format!("not a .npy file or a bad header: {h}"),
        ReadNpyError::LengthOverflow => "the shape overflows".into(),
        // Reading from bytes, an I/O error can only be running out of them.
        ReadNpyError::Io(e) => format!("not a .npy file or truncated ({e})"),
        other => other.to_string(),
    }
}

/// Writes `data` (row-major, `rows x cols`) as a `.npy` file, as NumPy writes it.
pub fn write<T: Element>(
    path: &Path,
    rows: usize,
    cols: usize,
    data: &[T],
) -> Result<(), AnnError> {
    let view = ArrayView2::from_shape((rows, cols), data).map_err(|_| {
        AnnError::Mismatch(format!(
            "writing {}: {} values for shape ({rows}, {cols})",
            path.display(),
            data.len()
        ))
    })?;
    let f = fs::File::create(path).map_err(io_err("create", path))?;
    view.write_npy(std::io::BufWriter::new(f))
        .map_err(|e| AnnError::Npy {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"\x93NUMPY";

    /// The npy fuzz target's find: a version-3 header claiming 0x40880000 bytes in a
    /// 19-byte file made the reader allocate 1 GiB. Refused before any allocation.
    #[test]
    fn a_header_longer_than_the_file_is_refused_without_allocating_it() {
        let data: &[u8] = &[
            147, 78, 85, 77, 80, 89, 3, 0, 0, 0, 0, 136, 64, 0, 0, 0, 0, 0, 0,
        ];
        let e = parse::<f32>(data).unwrap_err();
        assert!(e.contains("header claims"), "{e}");
        let e = parse::<i32>(data).unwrap_err();
        assert!(e.contains("header claims"), "{e}");
    }

    /// The npy fuzz target's second find: 28 nested `[` in a 128-byte header kept the
    /// reader's header grammar busy past libFuzzer's 10 s limit. Refused before parsing;
    /// ordinary headers, nesting 2 deep, still read.
    #[test]
    fn a_deeply_nested_header_is_refused_before_it_is_parsed() {
        let header = format!(
            "{{{}'descr': '<f4', 'fortran_order': False, 'shape': (0 ,4), }}        *            '        \n",
            "[".repeat(28)
        );
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&[1, 0]);
        data.extend_from_slice(&(header.len() as u16).to_le_bytes());
        data.extend_from_slice(header.as_bytes());
        assert_eq!(data.len(), 128, "the fuzzer's input, byte for byte");
        let e = parse::<f32>(&data).unwrap_err();
        assert!(e.contains("nests brackets 30 deep"), "{e}");

        // Brackets inside a quoted string are not nesting.
        assert_eq!(nesting_depth(b"{'descr': '[[[[[[', 'shape': (1, 2), }"), 2);
        let m: Matrix<f32> = parse(&npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }\n",
            8,
        ))
        .unwrap();
        assert_eq!((m.rows, m.cols), (1, 2));
    }

    /// A version-1 `.npy` file with `header` and `data_len` zero bytes of data.
    fn npy_bytes(header: &str, data_len: usize) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data_len));
        b
    }

    #[test]
    fn round_trips_and_pads_to_64_bytes() {
        let dir = std::env::temp_dir().join(format!("htg-ann-npy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write(&p, 2, 3, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0);
        let m: Matrix<f32> = read(&p).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.row(1), &[4.0, 5.0, 6.0]);
        let err = read::<i32>(&p).unwrap_err().to_string();
        assert!(err.contains("dtype <f4, expected <i4"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(parse::<f32>(b"hello").is_err());
        let mut one_d = Vec::new();
        one_d.extend_from_slice(MAGIC);
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n";
        one_d.extend_from_slice(&[1, 0]);
        one_d.extend_from_slice(&(h.len() as u16).to_le_bytes());
        one_d.extend_from_slice(h.as_bytes());
        one_d.extend_from_slice(&[0; 12]);
        assert!(parse::<f32>(&one_d).unwrap_err().contains("1 dimensions"));
        let truncated = &one_d[..one_d.len() - 4];
        assert!(parse::<f32>(truncated).is_err());
    }
}
