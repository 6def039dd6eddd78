//! Flat storage for vectors, codes and links: either owned, 64-byte aligned heap memory, or a
//! read-only view into a memory-mapped index file.

use std::alloc::{self, Layout};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

/// Cache-line alignment of every owned buffer, so a row that starts on a multiple of 64 bytes
/// never straddles one more line than it must.
pub(crate) const ALIGN: usize = 64;

/// Plain old data the buffers may hold: any bit pattern is a valid value.
pub(crate) trait Pod: Copy + Default + 'static {}
impl Pod for f32 {}
impl Pod for u32 {}
impl Pod for u8 {}
impl Pod for u64 {}

/// Owned buffers from this size up get their own anonymous mapping instead of the allocator's
/// heap: freeing one (the old engine after a compaction) returns its pages to the system at
/// once, whatever the allocator's thresholds (a server may raise them for inference's sake).
const OWN_MAPPING_BYTES: usize = 1 << 20;

/// `len` values of `T`, owned (zeroed at allocation) or borrowed from a mapped file.
///
/// Owned memory is written through `&self` by inserts (`write_row`), each row by one thread
/// before any other thread can learn its id; see the protocol in `graph/mod.rs`.
pub(crate) struct Buf<T: Pod> {
    ptr: *mut T,
    len: usize,
    owned: bool,
    /// What holds the memory, when not the allocator's heap.
    backing: Backing,
}

/// The memory behind a [`Buf`] that is not plain heap.
enum Backing {
    /// Heap memory from `alloc` (or nothing, for an empty buffer).
    Heap,
    /// A mapped file, kept alive as long as views into it exist.
    File(#[allow(dead_code)] Arc<memmap2::Mmap>),
    /// An anonymous mapping that holds a large owned buffer, unmapped on drop.
    Anon(#[allow(dead_code)] memmap2::MmapMut),
}

// SAFETY: the buffer is plain memory; concurrent access follows the insert protocol (disjoint
// rows written before publication, links through atomics).
unsafe impl<T: Pod> Send for Buf<T> {}
// SAFETY: as above.
unsafe impl<T: Pod> Sync for Buf<T> {}

impl<T: Pod> Buf<T> {
    /// Zeroed, aligned owned memory for `len` values.
    pub(crate) fn zeroed(len: usize) -> Buf<T> {
        let bytes = len * std::mem::size_of::<T>();
        if bytes == 0 {
            return Buf {
                ptr: std::ptr::NonNull::<T>::dangling().as_ptr(),
                len,
                owned: true,
                backing: Backing::Heap,
            };
        }
        if bytes >= OWN_MAPPING_BYTES {
            // Zeroed by the kernel, page-aligned (a multiple of ALIGN). On failure, the heap.
            if let Ok(mut m) = memmap2::MmapMut::map_anon(bytes) {
                // A search touches rows scattered over the whole buffer: with 4 KiB pages
                // nearly every row is a TLB miss (100k x 128 floats is 12 500 pages, several
                // times the TLB), and the profile showed the prefetches stalling on page walks.
                // Transparent huge pages cut that 512-fold. The system setting is usually
                // `madvise`, so ask; where huge pages are off this is a no-op.
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return Buf {
                    ptr: m.as_mut_ptr() as *mut T,
                    len,
                    owned: true,
                    backing: Backing::Anon(m),
                };
            }
        }
        let layout = Layout::from_size_align(bytes, ALIGN).expect("buffer size overflows");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) } as *mut T;
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        Buf {
            ptr,
            len,
            owned: true,
            backing: Backing::Heap,
        }
    }

    /// A view of `len` values at byte `offset` of `map`. The caller has checked bounds and
    /// that the offset is aligned for `T`.
    pub(crate) fn mapped(map: &Arc<memmap2::Mmap>, offset: usize, len: usize) -> Buf<T> {
        assert!(offset + len * std::mem::size_of::<T>() <= map.len());
        assert_eq!(
            (map.as_ptr() as usize + offset) % std::mem::align_of::<T>(),
            0
        );
        Buf {
            // SAFETY: in bounds, checked above. Mapped buffers are never written.
            ptr: unsafe { map.as_ptr().add(offset) } as *mut T,
            len,
            owned: false,
            backing: Backing::File(Arc::clone(map)),
        }
    }

    /// An owned copy with room for `len` values (at least the current length), the tail zeroed.
    pub(crate) fn grown(&self, len: usize) -> Buf<T> {
        let new = Buf::zeroed(len.max(self.len));
        // SAFETY: both regions are valid for `self.len` values and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, new.ptr, self.len) };
        new
    }

    pub(crate) fn is_owned(&self) -> bool {
        self.owned
    }

    /// Bytes of heap memory this buffer owns (zero for a mapped view).
    pub(crate) fn heap_bytes(&self) -> usize {
        if self.owned {
            self.len * std::mem::size_of::<T>()
        } else {
            0
        }
    }

    pub(crate) fn as_ptr(&self) -> *const T {
        self.ptr
    }

    /// `n` values from `start`. The caller guarantees no thread writes them meanwhile.
    #[inline(always)]
    pub(crate) fn slice(&self, start: usize, n: usize) -> &[T] {
        debug_assert!(start + n <= self.len);
        // SAFETY: in bounds (callers derive `start` from validated ids); see the type's docs.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), n) }
    }

    /// Writes `src` at `start`.
    ///
    /// # Safety
    /// The buffer is owned, the range is in bounds, and no other thread reads or writes it
    /// until the write is published (release store of a link or a level).
    pub(crate) unsafe fn write(&self, start: usize, src: &[T]) {
        debug_assert!(self.owned && start + src.len() <= self.len);
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(start), src.len()) };
    }

    /// The whole buffer (for saving). The caller guarantees no concurrent writes to it.
    pub(crate) fn all(&self) -> &[T] {
        self.slice(0, self.len)
    }
}

impl Buf<u32> {
    /// `n` link words from `start`, for atomic access: concurrent inserts rewrite neighbour
    /// lists while searches read them.
    #[inline(always)]
    pub(crate) fn atomics(&self, start: usize, n: usize) -> &[AtomicU32] {
        debug_assert!(start + n <= self.len);
        // SAFETY: in bounds, u32-aligned, and `AtomicU32` has the layout of `u32`. Mapped
        // (read-only) words are only ever loaded, never stored.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start) as *const AtomicU32, n) }
    }
}

impl<T: Pod> Drop for Buf<T> {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<T>();
        // A mapping unmaps itself when `backing` drops.
        if self.owned && bytes != 0 && matches!(self.backing, Backing::Heap) {
            let layout = Layout::from_size_align(bytes, ALIGN).expect("checked at allocation");
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { alloc::dealloc(self.ptr as *mut u8, layout) };
        }
    }
}
