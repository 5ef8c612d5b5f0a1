//! Software prefetch of the next packed B panel (or, while the first row block packs B
//! panel by panel, of the rows of B the next panel is packed from), spread over the
//! micro-kernel calls of the current one: the panel (KC × NR, 32 KiB) otherwise arrives
//! from L3 only when the first micro-kernel of the next column panel stalls on it.

/// A range of cache lines for one micro-kernel call to prefetch, one per k-step (a no-op
/// off x86, where no prefetch instruction is issued). The lines are contiguous, or rows of
/// a strided region: `2^shift` lines per row, rows `stride` bytes apart.
#[derive(Copy, Clone, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Prefetch {
    start: *const u8,
    lines: usize,
    /// Line index `first` of the region (lines counted row by row).
    first: usize,
    stride: usize,
    shift: u32,
}

impl Prefetch {
    pub const NONE: Prefetch = Prefetch {
        start: std::ptr::null(),
        lines: 0,
        first: 0,
        stride: 64,
        shift: 0,
    };

    /// Lines `[first, first + lines)` of the region at `base` (cache lines of 64 bytes).
    pub fn new(base: *const u8, first: usize, lines: usize) -> Prefetch {
        Prefetch {
            start: base,
            lines,
            first,
            stride: 64,
            shift: 0,
        }
    }

    /// Lines `[first, first + lines)` of a strided region at `base`: rows of
    /// `row_bytes` bytes (rounded up to a power of two of lines), `stride` bytes apart.
    pub fn rows(
        base: *const u8,
        row_bytes: usize,
        stride: usize,
        first: usize,
        lines: usize,
    ) -> Prefetch {
        Prefetch {
            start: base,
            lines,
            first,
            stride,
            shift: row_bytes
                .div_ceil(64)
                .max(1)
                .next_power_of_two()
                .trailing_zeros(),
        }
    }

    /// Prefetches line `step` of the range (nothing past its end).
    #[inline(always)]
    pub fn line(&self, step: usize) {
        if let Some(at) = self.address(step) {
            line_at(at);
        }
    }

    /// Where line `step` of the range lies (None past its end).
    #[inline(always)]
    fn address(&self, step: usize) -> Option<*const u8> {
        (step < self.lines).then(|| {
            let l = self.first + step;
            let row = (l >> self.shift).wrapping_mul(self.stride);
            let col = (l & ((1 << self.shift) - 1)) * 64;
            self.start.wrapping_add(row.wrapping_add(col))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_address_contiguous_lines_or_strided_rows() {
        let base = 4096 as *const u8;
        let at = |p: &Prefetch, step| p.address(step).map(|a| a as usize - 4096);
        let contiguous = Prefetch::new(base, 3, 2);
        assert_eq!(
            (0..3).map(|s| at(&contiguous, s)).collect::<Vec<_>>(),
            [Some(192), Some(256), None]
        );
        // Rows of 128 bytes (two lines) 12 KiB apart, from line 3 (row 1, second line).
        let rows = Prefetch::rows(base, 128, 12288, 3, 4);
        assert_eq!(
            (0..5).map(|s| at(&rows, s)).collect::<Vec<_>>(),
            [
                Some(12288 + 64),
                Some(24576),
                Some(24576 + 64),
                Some(36864),
                None
            ]
        );
        // Rows of 64 bytes (bf16 panels) and of 32 (one line each).
        let one = Prefetch::rows(base, 64, 1000, 0, 2);
        assert_eq!((at(&one, 0), at(&one, 1)), (Some(0), Some(1000)));
        let half = Prefetch::rows(base, 32, 500, 1, 1);
        assert_eq!(at(&half, 0), Some(500));
        assert_eq!(at(&Prefetch::NONE, 0), None);
    }
}
