//! AVX2 small-M GEMM kernel for one row of A over a row-major f32 B that stays in the
//! last-level cache (numpy's `x @ W` on an L3-resident W): B read in storage order, one
//! row at a time, as `avx512_gemv`'s `KnStreams::Cached` does with 512-bit vectors.

use std::arch::x86_64::*;

use crate::kernels::frame::prefetch::line_at;
use crate::kernels::x86_64::avx512_gemv::StreamArgs;

/// C[0, n0..n1] = Σ_p a[p] · B[p, n0..n1], two rows of B per pass in order (C, which stays
/// in L1, is loaded and stored once per pass), 64 floats a step, each line prefetched
/// 1.5 KiB ahead. Against the portable body's eight row streams (Zen 5 forced to the AVX2
/// tier, alternating in one process, GFLOP/s): 1 thread 1x768x3072 53-54 vs 44-45,
/// 1x576x1536 45-46 vs 41-44, 1x3072x768 55-56 vs 42-46; 2 threads (rows of B split
/// across the threads) 76-77 vs 67-72, 91-93 vs 60-69, 86 vs 55-56. One row per pass
/// read 40-51 at 1 thread: with 256-bit vectors, C's loads and stores bound it.
///
/// # Safety
/// The CPU supports AVX2 + FMA; `args.m` == 1; `a` holds k floats; B (f32) rows 0..k and
/// columns n0..n1 are readable; C row 0, columns n0..n1, is writable and not accessed by
/// anyone else during the call.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_gemv_kn_f32_one_row(args: &StreamArgs, n0: usize, n1: usize) {
    /// Floats per step (eight vectors, four lines of B).
    const W: usize = 64;
    /// Floats ahead of the stream that each step prefetches (1.5 KiB).
    const AHEAD: usize = 384;
    let StreamArgs { k, a, ldb, c, .. } = *args;
    let b = args.b.cast::<f32>();
    let width = n1 - n0;
    let full = width / W * W;
    let vec_end = width / 8 * 8;
    // SAFETY: C[0, n0..n1] is writable (the caller's contract).
    let y = unsafe { c.add(n0) };
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(y, 0, width) };
    let mut p = 0;
    // Two rows of B per pass: C is loaded and stored once per two rows (with 256-bit
    // vectors the L1 traffic of C, not L3, bounds one row per pass).
    while p + 2 <= k {
        // SAFETY: a holds k floats; rows p and p+1, columns n0..n1 of B are readable.
        let (c0, c1, r0, r1) = unsafe {
            (
                *a.add(p),
                *a.add(p + 1),
                b.add(p * ldb + n0),
                b.add((p + 1) * ldb + n0),
            )
        };
        let (a0, a1) = (_mm256_set1_ps(c0), _mm256_set1_ps(c1));
        let mut j = 0;
        while j < full {
            for line in 0..W / 16 {
                // Prefetches never fault, wherever they point.
                line_at(r0.wrapping_add(j + 16 * line + AHEAD).cast());
                line_at(r1.wrapping_add(j + 16 * line + AHEAD).cast());
            }
            for v in 0..W / 8 {
                let at = j + 8 * v;
                // SAFETY: at + 8 <= width: inside rows p, p+1 and C's columns.
                unsafe {
                    let acc = _mm256_fmadd_ps(
                        a1,
                        _mm256_loadu_ps(r1.add(at)),
                        _mm256_fmadd_ps(
                            a0,
                            _mm256_loadu_ps(r0.add(at)),
                            _mm256_loadu_ps(y.add(at)),
                        ),
                    );
                    _mm256_storeu_ps(y.add(at), acc);
                }
            }
            j += W;
        }
        while j < vec_end {
            // SAFETY: j + 8 <= width.
            unsafe {
                let acc = _mm256_fmadd_ps(
                    a1,
                    _mm256_loadu_ps(r1.add(j)),
                    _mm256_fmadd_ps(a0, _mm256_loadu_ps(r0.add(j)), _mm256_loadu_ps(y.add(j))),
                );
                _mm256_storeu_ps(y.add(j), acc);
            }
            j += 8;
        }
        for j in vec_end..width {
            // SAFETY: j < width: inside rows p, p+1 and C's columns.
            unsafe { *y.add(j) = c1.mul_add(*r1.add(j), c0.mul_add(*r0.add(j), *y.add(j))) };
        }
        p += 2;
    }
    for p in p..k {
        // SAFETY: a holds k floats; row p, columns n0..n1 of B are readable.
        let (coef, row) = unsafe { (*a.add(p), b.add(p * ldb + n0)) };
        let av = _mm256_set1_ps(coef);
        let mut j = 0;
        while j < vec_end {
            // SAFETY: j + 8 <= width.
            unsafe {
                let acc =
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(row.add(j)), _mm256_loadu_ps(y.add(j)));
                _mm256_storeu_ps(y.add(j), acc);
            }
            j += 8;
        }
        for j in vec_end..width {
            // SAFETY: j < width: inside row p and C's columns.
            unsafe { *y.add(j) = coef.mul_add(*row.add(j), *y.add(j)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dispatch::Isa;
    use crate::kernels::testing::check_row_major_kernel;

    /// Within f32 rounding of an f64 reference, on column ranges that start anywhere and
    /// end in every kind of tail (64-float steps, 8-float vectors, scalars), with an odd
    /// row count (a last single row) and rows longer than the range; columns outside the
    /// range stay untouched.
    #[test]
    fn one_row_matches_the_reference() {
        if !Isa::Avx2.is_supported() {
            return;
        }
        for (k, n0, n1, ldb) in [
            (1, 0, 1, 1),
            (2, 0, 8, 8),
            (3, 1, 10, 12),
            (7, 5, 200, 211),
            (64, 0, 64, 64),
            (65, 3, 132, 140),
            (300, 0, 131, 131),
        ] {
            check_row_major_kernel((1, k, n0, n1, ldb), "avx2 one row", |args, n0, n1| {
                // SAFETY: AVX2 + FMA are present (checked above); the helper's buffers hold
                // A (k), B (k rows of ldb >= n1) and C (ldb), all its own.
                unsafe { avx2_gemv_kn_f32_one_row(args, n0, n1) }
            });
        }
    }
}
