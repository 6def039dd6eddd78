//! The one byte codec of every file htg writes (the write-ahead log, the records file, the
//! graph file's header, snapshots): little-endian integers, `u32`-length-prefixed strings,
//! length-and-crc32 framed entries, and a cursor that reports truncation instead of panicking.
//!
//! One module, so that a format rule (little-endian, how long a string's length field is, what
//! a frame's header holds) is written once, and a reader can never disagree with the writer.

/// Appends `v` little-endian.
#[inline]
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` little-endian.
#[inline]
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `s` as a `u32` byte length and its UTF-8 bytes.
#[inline]
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `v` as a `u32` count and the values little-endian.
#[inline]
pub fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    put_u32(out, v.len() as u32);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Appends one frame: `[u32 payload length][u32 crc32 of payload][payload]`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    put_u32(out, payload.len() as u32);
    put_u32(out, crc32fast::hash(payload));
    out.extend_from_slice(payload);
}

/// Bytes of a frame's header.
pub const FRAME_HEADER: usize = 8;

/// What the bytes at the start of a buffer hold, read as a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole frame whose checksum matches, and the bytes it took.
    Whole(&'a [u8], usize),
    /// The buffer ends inside the frame (its header, or a payload `len` long).
    Short {
        /// The length field, when the header was whole.
        len: Option<u32>,
    },
    /// A whole frame whose checksum does not match, and the bytes it took.
    BadChecksum(usize),
}

/// Reads the frame at the start of `b`. Whether a short or damaged frame is a torn tail or
/// corruption depends on what follows it, which only the caller knows.
pub fn read_frame(b: &[u8]) -> Frame<'_> {
    let mut c = Cursor::new(b);
    let (Ok(len), Ok(crc)) = (c.u32(), c.u32()) else {
        return Frame::Short { len: None };
    };
    let Ok(payload) = c.take(len as usize) else {
        return Frame::Short { len: Some(len) };
    };
    let used = FRAME_HEADER + payload.len();
    if crc32fast::hash(payload) == crc {
        Frame::Whole(payload, used)
    } else {
        Frame::BadChecksum(used)
    }
}

/// Appends the crc32 of everything in `out` so far: the seal of a file written whole.
pub fn seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    put_u32(out, crc);
}

/// The body of a sealed buffer ([`seal`]), or `None` when it is too short or its seal fails.
pub fn unseal(b: &[u8]) -> Option<&[u8]> {
    let body_len = b.len().checked_sub(4)?;
    let (body, crc) = b.split_at(body_len);
    let mut c = Cursor::new(crc);
    (c.u32().ok()? == crc32fast::hash(body)).then_some(body)
}

/// Why a field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end before the field does.
    #[error("the data ends {missing} bytes early")]
    Truncated {
        /// Bytes that were missing.
        missing: usize,
    },
    /// A text field holds bytes that are not UTF-8.
    #[error("a text field is not UTF-8")]
    NotUtf8,
    /// A count times its element size does not fit in memory.
    #[error("a length field overflows")]
    Overflow,
}

/// Reads fields off a byte slice in order; every read checks the length first.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// A cursor at the start of `b`.
    pub fn new(b: &'a [u8]) -> Cursor<'a> {
        Cursor(b)
    }

    /// The bytes not read yet.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// The next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated {
                missing: n - self.0.len(),
            });
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u32`.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    #[inline]
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A string written by [`put_str`], borrowed.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::NotUtf8)
    }

    /// Values written by [`put_f32s`].
    pub fn f32s(&mut self) -> Result<Vec<f32>, CodecError> {
        let n = self.u32()? as usize;
        let raw = self.take(n.checked_mul(4).ok_or(CodecError::Overflow)?)?;
        Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_truncation_is_an_error() {
        let mut out = Vec::new();
        put_u64(&mut out, 7);
        put_str(&mut out, "héllo");
        put_f32s(&mut out, &[1.5, -2.0]);
        out.push(9);
        let mut c = Cursor::new(&out);
        assert_eq!(c.u64(), Ok(7));
        assert_eq!(c.str(), Ok("héllo"));
        assert_eq!(c.f32s(), Ok(vec![1.5, -2.0]));
        assert_eq!(c.u8(), Ok(9));
        assert!(c.rest().is_empty());
        assert_eq!(c.u32(), Err(CodecError::Truncated { missing: 4 }));
        let mut c = Cursor::new(&out[..10]);
        c.u64().unwrap();
        assert!(matches!(c.str(), Err(CodecError::Truncated { .. })));
        let mut bad = Vec::new();
        put_u32(&mut bad, 2);
        bad.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(Cursor::new(&bad).str(), Err(CodecError::NotUtf8));
    }

    #[test]
    fn frames_tell_whole_short_and_damaged_apart() {
        let mut out = Vec::new();
        put_frame(&mut out, b"abc");
        put_frame(&mut out, b"");
        assert_eq!(read_frame(&out), Frame::Whole(b"abc", 11));
        assert_eq!(read_frame(&out[11..]), Frame::Whole(b"", 8));
        assert_eq!(read_frame(&out[..5]), Frame::Short { len: None });
        assert_eq!(read_frame(&out[..9]), Frame::Short { len: Some(3) });
        let mut bad = out.clone();
        bad[9] ^= 1;
        assert_eq!(read_frame(&bad), Frame::BadChecksum(11));
    }

    #[test]
    fn a_seal_catches_any_flipped_byte() {
        let mut out = b"records".to_vec();
        seal(&mut out);
        assert_eq!(unseal(&out), Some(&b"records"[..]));
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert_eq!(unseal(&bad), None, "byte {i}");
        }
        assert_eq!(unseal(&out[..3]), None);
    }
}
