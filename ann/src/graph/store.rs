//! Flat storage for vectors, codes and links: owned, 64-byte aligned memory, or a view into a
//! memory-mapped index file.
//!
//! On unix an index file's sections are mapped copy-on-write (`MAP_PRIVATE`) into a region of
//! address space larger than the section: a write to an opened graph (a slot reused, a link
//! repaired) copies only the page it touches, never the file, and the rows appended after the
//! file's last one land in the anonymous rest of the region. So the first write after opening
//! costs a page fault, not a copy of the whole graph under the engine's write lock (462 ms at
//! 1M × 96 before), and resident memory grows by the pages written, not by a second copy. The
//! file itself is never written through the map. Elsewhere a section is a read-only view, and
//! [`Buf::grow`] copies it out before the first write.

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
/// Writable memory is written through `&self` by inserts (`write_row`), each row by one thread
/// before any other thread can learn its id; see the protocol in `graph/mod.rs`.
pub(crate) struct Buf<T: Pod> {
    ptr: *mut T,
    len: usize,
    /// Values that fit at `ptr` without moving (at least `len`): [`Buf::grow`] up to here is
    /// free. Past `len` the memory is zeroed.
    room: usize,
    /// Whether the memory may be written: false only for a read-only view of a file.
    writable: bool,
    /// Leading values that are the file's pages (the kernel's page cache until written), not
    /// memory of this process: they do not count in [`Buf::heap_bytes`].
    in_file: usize,
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
    /// A region of `bytes` at `base` whose start is a private (copy-on-write) map of a file
    /// and whose rest is anonymous memory; unmapped on drop.
    #[cfg(unix)]
    Private { base: *mut u8, bytes: usize },
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
                room: len,
                writable: true,
                in_file: 0,
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
                    room: len,
                    writable: true,
                    in_file: 0,
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
            room: len,
            writable: true,
            in_file: 0,
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
            // SAFETY: in bounds, checked above. Read-only views are never written.
            ptr: unsafe { map.as_ptr().add(offset) } as *mut T,
            len,
            room: len,
            writable: false,
            in_file: len,
            backing: Backing::File(Arc::clone(map)),
        }
    }

    /// `len` values at byte `offset` of `file`, mapped copy-on-write, with room to grow in
    /// place to `room` values (see the module's docs). The caller has checked that the range
    /// lies inside the file and that the offset is aligned for `T`.
    #[cfg(unix)]
    pub(crate) fn private(
        file: &std::fs::File,
        offset: usize,
        len: usize,
        room: usize,
    ) -> std::io::Result<Buf<T>> {
        use std::os::fd::AsRawFd;
        let size = std::mem::size_of::<T>();
        assert_eq!(offset % std::mem::align_of::<T>(), 0);
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p.is_power_of_two())
            .unwrap_or(4096);
        let up = |n: usize| n.div_ceil(page) * page;
        let lead = offset % page;
        let bytes = len * size;
        let region = up(lead + room.max(len) * size).max(page);
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                region,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = base as *mut u8;
        // From here on, dropping `buf` unmaps the whole region.
        let buf = Buf {
            // SAFETY: `lead` < one page <= `region`.
            ptr: unsafe { base.add(lead) } as *mut T,
            len,
            room: (region - lead) / size,
            writable: true,
            in_file: len,
            backing: Backing::Private {
                base,
                bytes: region,
            },
        };
        let in_file = up(lead + bytes);
        if bytes > 0 {
            let at = libc::off_t::try_from(offset - lead)
                .map_err(|_| std::io::Error::other("offset beyond off_t"))?;
            // SAFETY: MAP_FIXED replaces the start of the region mapped just above, which
            // nothing else uses. The mapped range ends inside the page holding the section's
            // last byte, which the caller checked is in the file, so no access can fault
            // beyond the end of the file.
            let p = unsafe {
                libc::mmap(
                    base as *mut libc::c_void,
                    in_file,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    at,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            // The rest of the last file page holds the next section's bytes: zero it, as
            // room past `len` always is (a copy-on-write of one page, never the file).
            // SAFETY: inside the region, which is writable.
            unsafe { std::ptr::write_bytes(base.add(lead + bytes), 0, in_file - lead - bytes) };
        }
        #[cfg(target_os = "linux")]
        if region > in_file {
            // As for large owned buffers in `zeroed`: appended rows are scattered reads.
            // SAFETY: advice only, on the anonymous part of the region.
            let _ = unsafe {
                libc::madvise(
                    base.add(in_file) as *mut libc::c_void,
                    region - in_file,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
        Ok(buf)
    }

    /// Turns read-ahead off for a copy-on-write file region (a quantised graph reads its f32
    /// vectors only to rescore a few candidates per query).
    pub(crate) fn advise_random(&self) {
        #[cfg(unix)]
        if let Backing::Private { base, bytes } = self.backing {
            // SAFETY: advice only, on the region this buffer maps.
            let _ = unsafe { libc::madvise(base as *mut libc::c_void, bytes, libc::MADV_RANDOM) };
        }
    }

    /// Makes the buffer `len` values long (never shorter), the new values zeroed: in place
    /// when it is writable and has the room, else by moving it to new owned memory.
    /// Exclusive access: no reader may hold a slice of it across the call.
    pub(crate) fn grow(&mut self, len: usize) {
        if self.writable && len <= self.room {
            self.len = self.len.max(len);
            return;
        }
        let new = Buf::zeroed(len.max(self.len));
        // SAFETY: both regions are valid for `self.len` values and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, new.ptr, self.len) };
        *self = new;
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// Whether some of the values are still the file's pages (mapped, read-only or
    /// copy-on-write).
    pub(crate) fn is_in_file(&self) -> bool {
        self.in_file > 0
    }

    /// Bytes of memory this buffer holds (a file's pages not counted: they are the kernel's
    /// page cache, shared and reclaimable, until written).
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.len - self.in_file.min(self.len)) * std::mem::size_of::<T>()
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
    /// The buffer is writable, the range is in bounds, and no other thread reads or writes it
    /// until the write is published (release store of a link or a level).
    pub(crate) unsafe fn write(&self, start: usize, src: &[T]) {
        debug_assert!(self.writable && start + src.len() <= self.len);
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(start), src.len()) };
    }

    /// The whole buffer (for saving). The caller guarantees no concurrent writes to it.
    pub(crate) fn all(&self) -> &[T] {
        self.slice(0, self.len)
    }

    /// The whole buffer's bytes (to checksum a mapped section through the map that serves
    /// it). The caller guarantees no concurrent writes to it.
    pub(crate) fn bytes(&self) -> &[u8] {
        let all = self.all();
        // SAFETY: `T` is plain data without padding (the `Pod` types are u8, u32, u64 and
        // f32), so its memory is initialised bytes; the length is the slice's size.
        unsafe { std::slice::from_raw_parts(all.as_ptr() as *const u8, std::mem::size_of_val(all)) }
    }
}

impl Buf<u32> {
    /// `n` link words from `start`, for atomic access: concurrent inserts rewrite neighbour
    /// lists while searches read them.
    #[inline(always)]
    pub(crate) fn atomics(&self, start: usize, n: usize) -> &[AtomicU32] {
        debug_assert!(start + n <= self.len);
        // SAFETY: in bounds, u32-aligned, and `AtomicU32` has the layout of `u32`. Words of
        // a read-only view are only ever loaded, never stored (writes need `is_writable`).
        unsafe { std::slice::from_raw_parts(self.ptr.add(start) as *const AtomicU32, n) }
    }
}

impl<T: Pod> Drop for Buf<T> {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<T>();
        #[cfg(unix)]
        if let Backing::Private { base, bytes } = self.backing {
            // SAFETY: the region mapped in `private`; no view of it outlives the buffer.
            unsafe { libc::munmap(base as *mut libc::c_void, bytes) };
            return;
        }
        // A memmap2 mapping unmaps itself when `backing` drops.
        if self.writable && bytes != 0 && matches!(self.backing, Backing::Heap) {
            let layout = Layout::from_size_align(bytes, ALIGN).expect("checked at allocation");
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { alloc::dealloc(self.ptr as *mut u8, layout) };
        }
    }
}
