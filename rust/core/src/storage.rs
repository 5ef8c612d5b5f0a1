//! Where a tensor's bytes live: an owned 64-byte-aligned buffer, a read-only
//! region of a memory-mapped file, or memory owned by someone else (a numpy
//! array, a DLPack producer) that an [`ExternalBuffer`] keeps alive.
//!
//! Storage is shared (`Arc<Storage>`) by every view of it. rtserve writes into
//! a storage after construction only through [`Storage::bytes_mut`], which needs
//! the storage exclusively (`Arc::get_mut`): the executor's in-place elementwise
//! ops. An owner outside Rust (numpy) may write, exactly as with `torch.from_numpy`.
//!
//! A fourth kind, an [`Arena`] region, holds the intermediates of a compiled
//! run: the executor offers one region of its planned arena to each node
//! ([`with_output_slot`]) and the op's output allocation ([`OutBuffer::new`])
//! takes it when the size matches. Every region handed out is registered with
//! a liveness token, and a region is handed out only when no live storage
//! overlaps it, so a planner mistake costs a fresh allocation, never a
//! clobbered value.

use std::alloc::{alloc_zeroed, dealloc, Layout as AllocLayout};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

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

    /// Frees every buffer held for reuse; returns the bytes freed.
    pub fn release() -> usize {
        let Ok(mut pool) = POOL.lock() else {
            return 0;
        };
        let freed = pool.held;
        for (len, addr) in pool.free.drain(..) {
            // SAFETY: every pooled entry is a live allocation of exactly `len` bytes at
            // `ALIGN`, handed over by `AlignedBuffer::drop` and owned by the pool alone.
            unsafe {
                std::alloc::dealloc(
                    addr as *mut u8,
                    std::alloc::Layout::from_size_align_unchecked(len, super::ALIGN),
                )
            };
        }
        pool.held = 0;
        freed
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

/// Frees the large buffers kept for reuse (at most 64 MiB: a buffer is reused only for an
/// output of exactly its size, so varying shapes, such as packed encoder batches, leave
/// buffers that may never be taken again). Returns the bytes freed. A server calls it when
/// its queues drain.
pub fn release_cached_buffers() -> usize {
    recycle::release()
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
    /// `[offset, offset + len)` of a run's arena; `token` marks the region live.
    Arena {
        arena: Arc<Arena>,
        offset: usize,
        len: usize,
        _token: Arc<()>,
    },
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
            Kind::Arena { arena, offset, .. } => arena.region_ptr(*offset),
        }
    }

    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Owned(b) => b.as_slice().len(),
            Kind::Mmap { len, .. } => *len,
            Kind::External(e) => e.len(),
            Kind::Arena { len, .. } => *len,
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
            Kind::Arena {
                arena, offset, len, ..
            } => {
                // SAFETY: the region lies inside the arena (checked when it was taken),
                // the arena outlives `self` (held by the Arc), and no writer overlaps a
                // registered live region (see `Arena::take_region`).
                unsafe { std::slice::from_raw_parts(arena.region_ptr(*offset), *len) }
            }
        }
    }

    /// The bytes for writing, when this storage is rtserve's own writable
    /// memory (an owned buffer or an arena region); `&mut self` (reached through
    /// `Arc::get_mut`) proves no other view of it exists.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        match &mut self.kind {
            Kind::Owned(b) => Some(b.as_mut_slice()),
            Kind::Arena {
                arena, offset, len, ..
            } => {
                // SAFETY: as in `as_bytes`; `&mut self` is the only handle on this region
                // (the storage is not shared, and the arena's registry keeps every other
                // live region disjoint from it).
                Some(unsafe { std::slice::from_raw_parts_mut(arena.region_ptr(*offset), *len) })
            }
            Kind::Mmap { .. } | Kind::External(_) => None,
        }
    }

    /// Whether this storage is a region of `arena`.
    pub fn is_in_arena(&self, arena: &Arc<Arena>) -> bool {
        matches!(&self.kind, Kind::Arena { arena: a, .. } if Arc::ptr_eq(a, arena))
    }

    /// Whether this storage is a region of some run's arena.
    pub fn is_arena(&self) -> bool {
        matches!(self.kind, Kind::Arena { .. })
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
            Kind::Arena { .. } => "arena",
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({}, {} bytes)", self.kind_name(), self.len())
    }
}

/// One run's memory for intermediates: a single anonymous mapping (so freeing
/// it returns the pages to the OS), carved into regions by the memory plan.
pub struct Arena {
    map: memmap2::MmapMut,
    /// Regions handed out and the liveness token of each.
    live: Mutex<Vec<(usize, usize, Weak<()>)>>,
}

// SAFETY: the mapping is plain memory owned by the arena; shared access goes
// through `as_bytes` of registered regions, writes only through a region taken
// exclusively (`take_region`) or a uniquely held storage (`bytes_mut`).
unsafe impl Send for Arena {}
// SAFETY: as above; the registry is behind a Mutex.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena of `bytes` (rounded up to a page; zero-filled by the OS).
    pub fn new(bytes: usize) -> Result<Arc<Arena>> {
        let map = memmap2::MmapMut::map_anon(bytes.max(1)).map_err(|_| Error::OutOfMemory {
            what: "run arena".into(),
            bytes: bytes as u128,
        })?;
        Ok(Arc::new(Arena {
            map,
            live: Mutex::new(Vec::new()),
        }))
    }

    /// Usable bytes.
    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    fn region_ptr(&self, offset: usize) -> *mut u8 {
        // Arithmetic only: offset <= capacity is checked when a region is taken.
        self.map.as_ptr().wrapping_add(offset).cast_mut()
    }

    /// The regions some storage still references (dead ones are forgotten here).
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<(usize, usize, Weak<()>)>> {
        // A poisoned registry only means a panic elsewhere; its data is still valid.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(_, _, t)| t.strong_count() > 0);
        live
    }

    /// Registers `[offset, offset + len)` as live and returns its token, or
    /// None when it does not fit or overlaps a live region.
    fn take_region(&self, offset: usize, len: usize) -> Option<Arc<()>> {
        if offset.checked_add(len)? > self.capacity() || !offset.is_multiple_of(ALIGN) {
            return None;
        }
        let mut live = self.live();
        if live
            .iter()
            .any(|&(o, l, _)| o < offset + len && offset < o + l)
        {
            return None;
        }
        let token = Arc::new(());
        live.push((offset, len, Arc::downgrade(&token)));
        Some(token)
    }

    /// Regions still referenced by some storage.
    pub fn live_regions(&self) -> usize {
        self.live().len()
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} bytes)", self.capacity())
    }
}

/// A region of an arena offered to the next output allocation on this thread.
struct Slot {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
    taken: bool,
}

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// Runs `f` with `[offset, offset + len)` of `arena` offered to the first
/// output allocation of exactly `len` bytes on this thread; returns f's result
/// and whether the region was taken.
pub fn with_output_slot<R>(
    arena: &Arc<Arena>,
    offset: usize,
    len: usize,
    f: impl FnOnce() -> R,
) -> (R, bool) {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            SLOT.with(|s| s.borrow_mut().take());
        }
    }
    SLOT.with(|s| {
        *s.borrow_mut() = Some(Slot {
            arena: arena.clone(),
            offset,
            len,
            taken: false,
        })
    });
    let guard = Clear;
    let r = f();
    let taken = SLOT.with(|s| s.borrow().as_ref().is_some_and(|s| s.taken));
    drop(guard);
    (r, taken)
}

/// The bytes of an op's output while it is written: an owned buffer, or the
/// arena region the executor offered for it.
pub enum OutBuffer {
    Owned(AlignedBuffer),
    Arena {
        arena: Arc<Arena>,
        offset: usize,
        len: usize,
        token: Arc<()>,
    },
}

impl OutBuffer {
    /// `len` bytes for an output: the offered arena region when its size is
    /// exactly `len` (contents stale unless `zeroed`), else a fresh buffer
    /// (zeroed when asked, see [`AlignedBuffer::for_overwrite`]).
    pub fn new(len: usize, zeroed: bool) -> Result<OutBuffer> {
        let offered = SLOT.with(|s| {
            let mut s = s.borrow_mut();
            let slot = s.as_mut().filter(|s| !s.taken && s.len == len && len > 0)?;
            let token = slot.arena.take_region(slot.offset, len)?;
            slot.taken = true;
            Some((slot.arena.clone(), slot.offset, token))
        });
        match offered {
            Some((arena, offset, token)) => {
                let mut out = OutBuffer::Arena {
                    arena,
                    offset,
                    len,
                    token,
                };
                if zeroed {
                    out.as_mut_slice().fill(0);
                }
                Ok(out)
            }
            None if zeroed => Ok(OutBuffer::Owned(AlignedBuffer::zeroed(len)?)),
            None => Ok(OutBuffer::Owned(AlignedBuffer::for_overwrite(len)?)),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            OutBuffer::Owned(b) => b.as_mut_slice(),
            OutBuffer::Arena {
                arena, offset, len, ..
            } => {
                // SAFETY: `take_region` checked the region lies in the arena and that no
                // live storage overlaps it, and registered it, so nothing else reads or
                // writes it while this buffer (then its storage) holds the token.
                unsafe { std::slice::from_raw_parts_mut(arena.region_ptr(*offset), *len) }
            }
        }
    }

    /// The buffer as f32 values (its length must be a multiple of 4).
    pub fn as_mut_f32(&mut self) -> &mut [f32] {
        let bytes = self.as_mut_slice();
        let n = bytes.len() / 4;
        // SAFETY: both kinds are 64-byte aligned (arena offsets are multiples of 64 in
        // a page-aligned map), valid for n f32s, and every bit pattern is an f32.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<f32>(), n) }
    }

    pub fn into_storage(self) -> Storage {
        match self {
            OutBuffer::Owned(b) => Storage::owned(b),
            OutBuffer::Arena {
                arena,
                offset,
                len,
                token,
            } => Storage {
                kind: Kind::Arena {
                    arena,
                    offset,
                    len,
                    _token: token,
                },
                writable: true,
            },
        }
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
