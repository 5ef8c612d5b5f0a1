//! Software prefetch of the next packed B panel, spread over the micro-kernel
//! calls of the current one: the panel (KC × NR, 32 KiB) otherwise arrives from
//! L3 only when the first micro-kernel of the next column panel stalls on it.

/// A range of cache lines for one micro-kernel call to prefetch, one per k-step (a no-op
/// off x86, where no prefetch instruction is issued).
#[derive(Copy, Clone, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Prefetch {
    start: *const u8,
    lines: usize,
}

impl Prefetch {
    pub const NONE: Prefetch = Prefetch {
        start: std::ptr::null(),
        lines: 0,
    };

    /// Lines `[first, first + lines)` of the region at `base` (cache lines of 64 bytes).
    pub fn new(base: *const u8, first: usize, lines: usize) -> Prefetch {
        Prefetch {
            start: base.wrapping_add(first * 64),
            lines,
        }
    }

    /// Prefetches line `step` of the range (nothing past its end).
    #[inline(always)]
    pub fn line(&self, step: usize) {
        if step < self.lines {
            line_at(self.start.wrapping_add(step * 64));
        }
    }
}

/// Bytes ahead of a sequential read that streaming kernels prefetch: enough lines in
/// flight for one core to read at DRAM speed, where the hardware prefetcher alone left
/// one thread at about three quarters of it (Zen 5; see `x86_64::avx512_gemv`).
/// (Measured over the SmolLM2-135M decode: 512 B ahead 114–117 tok/s bf16, 1 KiB 117,
/// 2 KiB 121–123, 4 KiB 114–129: the noise of this machine.)
pub const STREAM_AHEAD: usize = 2048;

/// Prefetches the line `STREAM_AHEAD` bytes past `at`: a hint for a sequential read
/// that will get there (it never faults, whatever the address).
#[inline(always)]
pub fn stream_ahead(at: *const u8) {
    line_at(at.wrapping_add(STREAM_AHEAD));
}

/// [`stream_ahead`], or [`stream_ahead_once`] when `once`.
#[inline(always)]
pub fn stream_ahead_as(at: *const u8, once: bool) {
    if once {
        stream_ahead_once(at);
    } else {
        stream_ahead(at);
    }
}

/// [`stream_ahead_as`] for each of the `lines` cache lines from `at`: the lines a
/// small-M kernel's step reads from a stream of pre-packed panels, whose panels lie end
/// to end (so the prefetch runs on into the next one).
#[inline(always)]
pub fn stream_lines(at: *const u8, lines: usize, once: bool) {
    for l in 0..lines {
        stream_ahead_as(at.wrapping_add(64 * l), once);
    }
}

/// [`stream_ahead`] for data read once and not again before much more has streamed past
/// (weights larger than the last-level cache): a non-temporal hint, so the stream does
/// not push everything else out of L2 and L3. See [`crate::kernels::frame::gemm::weights_outgrow_cache`].
#[inline(always)]
pub fn stream_ahead_once(at: *const u8) {
    let at = at.wrapping_add(STREAM_AHEAD);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_NTA }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Prefetches the line holding `at` into L1 (a hint that never faults, whatever the
/// address; nothing off x86). Every prefetch of the kernels goes through here, except
/// the non-temporal one of [`stream_ahead_once`].
#[inline(always)]
pub fn line_at(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
