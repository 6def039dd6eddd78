//! Minimal `.npy` (NumPy format 1.0–3.0) reading and writing of 2-D little-endian `f32` and
//! `i32` arrays in C order: all that a data set directory holds, so Rust and the Python peers
//! read exactly the same bytes without a NumPy dependency here.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::{io_err, AnnError};

const MAGIC: &[u8] = b"\x93NUMPY";

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
pub trait Element: Copy {
    /// NumPy's `descr` for the type, little-endian.
    const DESCR: &'static str;
    /// Decodes one value from 4 little-endian bytes.
    fn from_le(b: [u8; 4]) -> Self;
    /// Encodes one value as 4 little-endian bytes.
    fn to_le(self) -> [u8; 4];
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl Element for i32 {
    const DESCR: &'static str = "<i4";
    fn from_le(b: [u8; 4]) -> Self {
        i32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// Reads a 2-D array of `T`; any other dtype, rank or Fortran order is an error naming the file.
pub fn read<T: Element>(path: &Path) -> Result<Matrix<T>, AnnError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    parse(&bytes).map_err(|reason| AnnError::Npy {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the bytes of a `.npy` file.
pub fn parse<T: Element>(bytes: &[u8]) -> Result<Matrix<T>, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|e| *e <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr
        .trim_start_matches(['\'', '"'])
        .split(['\'', '"'])
        .next()
        .unwrap_or("");
    if descr != T::DESCR {
        return Err(format!("dtype {descr}, expected {}", T::DESCR));
    }
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran order is not supported; save with C order".into());
    }
    let shape = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<Result<_, _>>()?;
    if dims.len() != 2 {
        return Err(format!(
            "shape has {} dimensions, expected 2 (rows, columns)",
            dims.len()
        ));
    }
    let (rows, cols) = (dims[0], dims[1]);
    let count = rows.checked_mul(cols).ok_or("shape overflows")?;
    let body = &bytes[end..];
    if Some(body.len()) != count.checked_mul(4) {
        return Err(format!(
            "shape ({rows}, {cols}) needs {} data bytes, the file has {}",
            count.saturating_mul(4),
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| T::from_le([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Matrix { rows, cols, data })
}

/// The text after `'key':` in a header dict, up to the end of the value.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let colon = rest.find(':')?;
    Some(rest[colon + 1..].trim_start())
}

/// Writes `data` (row-major, `rows x cols`) as a version 1.0 `.npy` file.
pub fn write<T: Element>(
    path: &Path,
    rows: usize,
    cols: usize,
    data: &[T],
) -> Result<(), AnnError> {
    if data.len() != rows * cols {
        return Err(AnnError::Mismatch(format!(
            "writing {}: {} values for shape ({rows}, {cols})",
            path.display(),
            data.len()
        )));
    }
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}",
        T::DESCR
    );
    // Magic, version and length take 10 bytes; the header ends in '\n' and the data starts on a
    // 64-byte boundary, as NumPy writes it.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le());
    }
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(&out).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

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
