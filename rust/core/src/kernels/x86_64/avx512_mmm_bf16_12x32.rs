//! AVX512_BF16 micro-kernel: bf16 A and B pairs, f32 accumulation with
//! `vdpbf16ps` (two multiply-adds per lane per instruction). 12×32 tile.

use std::arch::x86_64::*;

use crate::kernels::frame::prefetch::Prefetch;
use crate::kernels::x86_64::avx512_mmm_f32_12x32::{steps_then_store, C_AHEAD};

pub const MR: usize = 12;
pub const NR: usize = 32;

/// C[0..12, 0..32] (+)= A · B over `kp` k-pairs. `a` holds `kp*12` u32 (a bf16
/// pair per row), `b` holds `kp*32*2` bf16 (a pair per column).
///
/// # Safety
/// The CPU supports AVX-512F + AVX512_BF16; buffers as described; `c` points to
/// a writable 12 × 32 tile with row stride `ldc`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn avx512_mmm_bf16_12x32(
    kp: usize,
    a: *const u32,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    prefetch: Prefetch,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    macro_rules! k_pair {
        ($step:expr) => {
            prefetch.line($step);
            // SAFETY: a and b advance by one k-pair within the packed panels.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(32).cast()));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
                }
                a = a.add(MR);
                b = b.add(NR * 2);
            }
        };
    }
    // The C tile is pulled in C_AHEAD pairs before the end, where it is written (see the
    // f32 kernel's C_AHEAD).
    steps_then_store!(kp, k_pair, acc, c, ldc, accumulate);
}
