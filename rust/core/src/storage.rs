//! Where a tensor's bytes live: an owned 64-byte-aligned buffer, a read-only
//! region of a memory-mapped file, or memory owned by someone else (a numpy
//! array, a DLPack producer) that an [`ExternalBuffer`] keeps alive.
//!
//! Storage is shared (`Arc<Storage>`) by every view of it. rtserve itself never
//! writes into a storage after construction; an owner outside Rust (numpy) may,
//! exactly as with `torch.from_numpy`.

use std::alloc::{alloc_zeroed, dealloc, Layout as AllocLayout};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Alignment of every buffer rtserve allocates (one cache line, AVX-512 width).
pub const ALIGN: usize = 64;

/// Memory owned by another runtime, kept alive for as long as this value lives.
pub trait ExternalBuffer: Send + Sync {
    /// Lowest address of the region.
    fn as_ptr(&self) -> *const u8;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the owner allows writes through views of this memory.
    fn is_writable(&self) -> bool;
}

/// A zero-initialised, 64-byte-aligned heap buffer.
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    len: usize,
    /// Came from the reuse pool (holds stale data, already paged in).
    recycled: bool,
}

// SAFETY: AlignedBuffer owns its allocation exclusively; the raw pointer is not
// shared with anything that could mutate it without `&mut self`.
unsafe impl Send for AlignedBuffer {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for AlignedBuffer {}

/// Large buffers freed recently, kept for reuse: a fresh multi-megabyte
/// allocation is mapped from the OS and page-faults on first touch (zeroing
/// every page), which costs 5-10% of a 1024³ GEMM. Bounded in total bytes.
mod recycle {
    use std::ptr::NonNull;
    use std::sync::Mutex;

    /// Only buffers at least this large are kept.
    pub const MIN_BYTES: usize = 1 << 20;
    /// At most this many bytes are held for reuse.
    pub const MAX_BYTES: usize = 64 << 20;

    struct Pool {
        free: Vec<(usize, usize)>, // (len, address)
        held: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool {
        free: Vec::new(),
        held: 0,
    });

    /// A previously freed buffer of exactly `len` bytes (stale but initialised contents).
    pub fn take(len: usize) -> Option<NonNull<u8>> {
        let mut pool = POOL.lock().ok()?;
        let at = pool.free.iter().position(|&(l, _)| l == len)?;
        let (_, addr) = pool.free.swap_remove(at);
        pool.held -= len;
        NonNull::new(addr as *mut u8)
    }

    /// Offers a buffer for reuse; false when the pool is full (caller frees it).
    pub fn give(ptr: NonNull<u8>, len: usize) -> bool {
        let Ok(mut pool) = POOL.lock() else {
            return false;
        };
        if len < MIN_BYTES || pool.held + len > MAX_BYTES {
            return false;
        }
        pool.held += len;
        pool.free.push((len, ptr.as_ptr() as usize));
        true
    }
}

impl AlignedBuffer {
    /// Allocates `len` zeroed bytes, reporting failure instead of aborting.
    pub fn zeroed(len: usize) -> Result<AlignedBuffer> {
        let mut buf = AlignedBuffer::for_overwrite(len)?;
        if buf.recycled {
            buf.as_mut_slice().fill(0);
        }
        Ok(buf)
    }

    /// Allocates `len` bytes whose contents are unspecified (zero, or stale
    /// data of an earlier buffer): for outputs that are fully overwritten.
    pub fn for_overwrite(len: usize) -> Result<AlignedBuffer> {
        if len == 0 {
            return Ok(AlignedBuffer {
                ptr: Self::dangling(),
                len: 0,
                recycled: false,
            });
        }
        if len >= recycle::MIN_BYTES {
            if let Some(ptr) = recycle::take(len) {
                return Ok(AlignedBuffer {
                    ptr,
                    len,
                    recycled: true,
                });
            }
        }
        let layout = AllocLayout::from_size_align(len, ALIGN).map_err(|_| Error::OutOfMemory {
            what: "tensor buffer".into(),
            bytes: len as u128,
        })?;
        // SAFETY: layout has non-zero size (len > 0 checked above).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(Error::OutOfMemory {
            what: "tensor buffer".into(),
            bytes: len as u128,
        })?;
        Ok(AlignedBuffer {
            ptr,
            len,
            recycled: false,
        })
    }

    /// An aligned copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<AlignedBuffer> {
        let mut buf = AlignedBuffer::for_overwrite(bytes.len())?;
        buf.as_mut_slice().copy_from_slice(bytes);
        Ok(buf)
    }

    fn dangling() -> NonNull<u8> {
        // An aligned, non-null address that is never dereferenced (len == 0).
        NonNull::new(ALIGN as *mut u8).unwrap_or(NonNull::dangling())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (allocated with that size, or len == 0
        // with an aligned non-null dangling pointer), initialised by alloc_zeroed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer as f32 values (its length must be a multiple of 4).
    pub fn as_mut_f32(&mut self) -> &mut [f32] {
        let n = self.len / 4;
        // SAFETY: the pointer is 64-byte aligned (or dangling-aligned when empty), valid
        // for len bytes, every bit pattern is a valid f32, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<f32>(), n) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        if self.len > 0 && !recycle::give(self.ptr, self.len) {
            // SAFETY: allocated in `zeroed` with exactly this size and alignment.
            unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    AllocLayout::from_size_align_unchecked(self.len, ALIGN),
                )
            };
        }
    }
}

enum Kind {
    Owned(AlignedBuffer),
    Mmap {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
    External(Box<dyn ExternalBuffer>),
}

/// The bytes behind one or more tensors.
pub struct Storage {
    kind: Kind,
    /// Cleared for copies of read-only data (e.g. misaligned weights copied out
    /// of a mapped file) so they stay read-only like their source.
    writable: bool,
}

impl Storage {
    pub fn owned(buffer: AlignedBuffer) -> Storage {
        Storage {
            kind: Kind::Owned(buffer),
            writable: true,
        }
    }

    /// An owned buffer that views must not write through.
    pub fn owned_read_only(buffer: AlignedBuffer) -> Storage {
        Storage {
            kind: Kind::Owned(buffer),
            writable: false,
        }
    }

    /// A read-only window `[start, start + len)` of a mapped file.
    pub fn mmap(map: Arc<memmap2::Mmap>, start: usize, len: usize) -> Result<Storage> {
        match start.checked_add(len) {
            Some(end) if end <= map.len() => Ok(Storage {
                kind: Kind::Mmap { map, start, len },
                writable: false,
            }),
            _ => Err(Error::Internal(format!(
                "mmap window {start}+{len} outside a map of {} bytes",
                map.len()
            ))),
        }
    }

    pub fn external(buffer: Box<dyn ExternalBuffer>) -> Storage {
        let writable = buffer.is_writable();
        Storage {
            kind: Kind::External(buffer),
            writable,
        }
    }

    pub fn as_ptr(&self) -> *const u8 {
        match &self.kind {
            Kind::Owned(b) => b.as_slice().as_ptr(),
            // SAFETY (arithmetic only): start <= map.len() checked in `Storage::mmap`.
            Kind::Mmap { map, start, .. } => map[*start..].as_ptr(),
            Kind::External(e) => e.as_ptr(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Owned(b) => b.as_slice().len(),
            Kind::Mmap { len, .. } => *len,
            Kind::External(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage's bytes. For external storage the owner must not write
    /// concurrently with a read; rtserve never writes to storage it did not
    /// just allocate.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.kind {
            Kind::Owned(b) => b.as_slice(),
            Kind::Mmap { map, start, len } => &map[*start..*start + *len],
            Kind::External(e) => {
                if e.is_empty() {
                    return &[];
                }
                // SAFETY: the ExternalBuffer contract: as_ptr is valid for len
                // bytes for as long as the buffer (owned by self) lives.
                unsafe { std::slice::from_raw_parts(e.as_ptr(), e.len()) }
            }
        }
    }

    /// False for memory-mapped files, their copies, and read-only external memory.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// `owned`, `mmap` or `external`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Owned(_) => "owned",
            Kind::Mmap { .. } => "mmap",
            Kind::External(_) => "external",
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({}, {} bytes)", self.kind_name(), self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for len in [0usize, 1, 7, 64, 1000] {
            let b = AlignedBuffer::zeroed(len).unwrap();
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn recycled_buffers_are_zeroed_when_asked() {
        let len = 3 << 20;
        let mut b = AlignedBuffer::zeroed(len).unwrap();
        b.as_mut_slice().fill(7);
        drop(b); // goes to the reuse pool
        let again = AlignedBuffer::zeroed(len).unwrap();
        assert!(again.as_slice().iter().all(|&x| x == 0));
        assert_eq!(again.as_slice().as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn impossible_allocation_is_an_error() {
        assert!(matches!(
            AlignedBuffer::zeroed(usize::MAX - 8),
            Err(Error::OutOfMemory { .. })
        ));
    }
}
