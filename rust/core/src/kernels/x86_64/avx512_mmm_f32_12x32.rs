//! AVX-512 f32 micro-kernel: a 12×32 tile of C in 24 zmm accumulators. Per k:
//! two 16-wide loads of packed B and 12 broadcasts of packed A (folded into
//! the FMAs as embedded broadcasts), 24 FMAs.

use std::arch::x86_64::*;

use crate::kernels::frame::prefetch::Prefetch;

pub const MR: usize = 12;
pub const NR: usize = 32;

/// k-steps before the end of the loop at which the kernels prefetch their C tile for
/// writing. (Zen 5, alternating in one process, GFLOP/s: 1 thread 1024³ 250-258 vs
/// 247-252 with the prefetch at the start, 2048³ 252 vs 247-249, 512x768x3072 240-244 vs
/// 237-241; 2 threads 493-497 vs 488-491, 492-499 vs 485-490, 469-471 vs 463-468. 128
/// steps measured the same, 16 no better than the start.)
pub const C_AHEAD: usize = 64;

/// The kernel's loop and stores, B advancing `$b_step` floats a k-step.
macro_rules! kernel_body {
    ($k:expr, $a:expr, $b:expr, $b_step:expr, $c:expr, $ldc:expr, $accumulate:expr, $prefetch:expr) => {{
        let (k, a, b, c, ldc, accumulate) = ($k, $a, $b, $c, $ldc, $accumulate);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        macro_rules! k_step {
            ($step:expr) => {
                $prefetch.line($step);
                // SAFETY: a and b advance by one k-step within A's panel and B's k rows
                // (packed, or B's own rows `$b_step` apart): k steps in all.
                unsafe {
                    let b0 = _mm512_loadu_ps(b);
                    let b1 = _mm512_loadu_ps(b.add(16));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let ai = _mm512_set1_ps(*a.add(i));
                        row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                        row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                    }
                    a = a.add(MR);
                    b = b.add($b_step);
                }
            };
        }
        // The C tile is pulled in C_AHEAD steps before the end, where it is written: C of a
        // large GEMM lives in L3 or DRAM, and stores that miss fill the store buffer and
        // stall the next call. Fetched at the start instead, the lines were evicted again
        // by the 100+ KiB of A and B that stream through L1 during the loop.
        steps_then_store!(k, k_step, acc, c, ldc, accumulate);
    }};
}

/// C[0..12, 0..32] (+)= A_panel (k × 12, k-major) · B_panel (k × 32, k-major).
///
/// # Safety
/// The CPU supports AVX-512F + FMA; `a` holds `k*12`, `b` holds `k*32` floats;
/// `c` points to a 12 × 32 tile with row stride `ldc` (writable).
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn avx512_mmm_f32_12x32(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    prefetch: Prefetch,
) {
    kernel_body!(k, a, b, NR, c, ldc, accumulate, prefetch)
}

/// The same tile with B read where it is: row-major, `ldb` floats between k-steps (32
/// floats of each row). For products whose B panels are read by at most two row blocks,
/// packing B cost more than the strided reads it saves (Zen 5, 1 thread, alternating in
/// one process: 32x384x1536 230 vs 181 GFLOP/s, 128x384x384 249-250 vs 229-233; with
/// 15 row blocks, 1024³, 242 vs 248).
///
/// # Safety
/// As [`avx512_mmm_f32_12x32`], with B's `k` rows of 32 readable floats `ldb` apart.
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn avx512_mmm_f32_12x32_direct(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    kernel_body!(k, a, b, ldb, c, ldc, accumulate, Prefetch::NONE)
}

/// Runs `$k_step!(step)` for every step of `0..$steps`, prefetches the 12 × 32 C tile at
/// `$c` for writing `C_AHEAD` steps before the end, then writes (or, with `$accumulate`,
/// adds) the accumulators `$acc` into it: the shared tail of both AVX-512 GEMM kernels (a
/// macro, not a function: the accumulators must stay in registers).
///
/// Safety (of the expansion site): `$c` points to a writable 12 × 32 tile with row stride
/// `$ldc`; the CPU supports AVX-512F.
macro_rules! steps_then_store {
    ($steps:expr, $k_step:ident, $acc:expr, $c:expr, $ldc:expr, $accumulate:expr) => {
        let c_at = $steps.saturating_sub(C_AHEAD);
        for step in 0..c_at {
            $k_step!(step);
        }
        for i in 0..MR {
            let row = $c.wrapping_add(i * $ldc);
            // A prefetch is a hint: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_ET0>(row.cast());
            _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(16).cast());
        }
        for step in c_at..$steps {
            $k_step!(step);
        }
        for (i, row) in $acc.iter().enumerate() {
            // SAFETY: row i of the tile is 32 writable floats at c + i*ldc (the contract).
            unsafe {
                let dst = $c.add(i * $ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if $accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(dst));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(dst.add(16)));
                }
                _mm512_storeu_ps(dst, v0);
                _mm512_storeu_ps(dst.add(16), v1);
            }
        }
    };
}
pub(crate) use steps_then_store;
