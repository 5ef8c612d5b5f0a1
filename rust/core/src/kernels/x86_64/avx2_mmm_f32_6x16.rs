//! AVX2 f32 micro-kernel: a 6×16 tile of C in 12 ymm accumulators (the classic
//! Haswell shape: 12 accumulators + 2 B vectors + 1 broadcast = 15 registers).

use std::arch::x86_64::*;

use crate::kernels::frame::prefetch::Prefetch;

pub const MR: usize = 6;
pub const NR: usize = 16;

/// C[0..6, 0..16] (+)= A_panel (k × 6, k-major) · B_panel (k × 16, k-major).
///
/// # Safety
/// The CPU supports AVX2 + FMA; `a` holds `k*6`, `b` holds `k*16` floats; `c`
/// points to a 6 × 16 tile with row stride `ldc` (writable).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_mmm_f32_6x16(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    prefetch: Prefetch,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // Start pulling the C tile in now (it is written at the end): C of a large
    // GEMM lives in L3 or DRAM, and the demand misses would stall the stores.
    for i in 0..MR {
        let row = c.wrapping_add(i * ldc);
        // A prefetch is a hint: it never faults, whatever the address.
        _mm_prefetch::<_MM_HINT_ET0>(row.cast());
        _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(8).cast());
    }
    let (mut a, mut b) = (a, b);
    for step in 0..k {
        prefetch.line(step);
        // SAFETY: a and b advance by one k-step within the packed panels (k steps total).
        unsafe {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row i of the 6 × 16 tile is 16 writable floats at c + i*ldc.
        unsafe {
            let dst = c.add(i * ldc);
            let (mut v0, mut v1) = (row[0], row[1]);
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(dst));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(dst.add(8)));
            }
            _mm256_storeu_ps(dst, v0);
            _mm256_storeu_ps(dst.add(8), v1);
        }
    }
}
