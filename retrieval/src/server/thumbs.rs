//! Downscaled thumbnails for the page (`GET /images/{id}/thumb`), made once per file and size
//! and then served from memory: a page of results would otherwise decode every full photo
//! again on each visit, and send megabytes where kilobytes are shown.

use std::collections::{HashMap, VecDeque};

use actix_web::web::Bytes;
use parking_lot::Mutex;

/// Memory the cache may hold: about 2,000 thumbnails of 256 px.
pub const BUDGET_BYTES: usize = 32 << 20;

/// Thumbnails by the file's sha256 and the size asked for. Keyed by content, not id, so a
/// file replaced under the same path never shows its old picture. The oldest go first once
/// the budget is reached. Held as `Bytes`, so serving one is a reference count, not a copy.
#[derive(Default)]
pub struct Thumbs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(String, u32), Bytes>,
    order: VecDeque<(String, u32)>,
    bytes: usize,
}

impl Thumbs {
    /// The thumbnail made before, if it is still held.
    pub fn get(&self, sha256: &str, size: u32) -> Option<Bytes> {
        self.inner
            .lock()
            .map
            .get(&(sha256.to_string(), size))
            .cloned()
    }

    /// Keeps `thumb`, evicting the oldest until it fits in [`BUDGET_BYTES`].
    pub fn put(&self, sha256: &str, size: u32, thumb: Bytes) {
        let key = (sha256.to_string(), size);
        let mut inner = self.inner.lock();
        if thumb.len() > BUDGET_BYTES || inner.map.contains_key(&key) {
            return;
        }
        while inner.bytes + thumb.len() > BUDGET_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(t) = inner.map.remove(&old) {
                inner.bytes -= t.len();
            }
        }
        inner.bytes += thumb.len();
        inner.order.push_back(key.clone());
        inner.map.insert(key, thumb);
    }

    /// Thumbnails held and their bytes: what the budget test reads.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_the_budget_holds() {
        let t = Thumbs::default();
        let big = Bytes::from(vec![0u8; BUDGET_BYTES / 3]);
        for name in ["a", "b", "c", "d"] {
            t.put(name, 256, big.clone());
        }
        assert!(t.get("a", 256).is_none(), "the oldest was evicted");
        assert!(t.get("d", 256).is_some());
        assert!(
            t.get("d", 128).is_none(),
            "another size is another thumbnail"
        );
        let (n, bytes) = t.usage();
        assert_eq!(n, 3);
        assert!(bytes <= BUDGET_BYTES);
        t.put("huge", 256, Bytes::from(vec![0u8; BUDGET_BYTES + 1]));
        assert!(t.get("huge", 256).is_none());
    }
}
