//! Software prefetch of the next packed B panel, spread over the micro-kernel
//! calls of the current one: the panel (KC × NR, 32 KiB) otherwise arrives from
//! L3 only when the first micro-kernel of the next column panel stalls on it.

/// A range of cache lines for one micro-kernel call to prefetch, one per k-step.
#[derive(Copy, Clone, Debug)]
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
            #[cfg(target_arch = "x86_64")]
            // SAFETY: prefetch is a hint that never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.start.wrapping_add(step * 64).cast(),
                )
            };
        }
    }
}
