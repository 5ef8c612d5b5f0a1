//! AVX-512 small-M GEMM for row-major f32 B (numpy's `x @ W` with M ≤ 8 rows):
//! the memory-bound decode case. Four rows of B are consumed per sweep across
//! a column range, accumulating into C (kept in L1/L2), so B is read exactly
//! once as four sequential streams. (Measured on Zen 5 over eight placements
//! of B: 4 rows give a median of 58 GFLOP/s at 1×576×1536, 8 rows 56, 16 rows 50.)

use std::arch::x86_64::*;

/// C[0..m, n0..n1] = A (m × k, row-major, lda = k) · B[0..k, n0..n1] (row stride ldb).
///
/// # Safety
/// The CPU supports AVX-512F + FMA; `a` holds m*k floats; B rows 0..k and columns
/// n0..n1 are readable; C rows 0..m and columns n0..n1 are writable (row stride ldc)
/// and not accessed by anyone else during the call.
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn avx512_gemv_kn_f32(
    m: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    n0: usize,
    n1: usize,
) {
    const W: usize = 32;
    const KB: usize = 4;
    let full_end = n0 + (n1 - n0) / W * W;
    for r in 0..m {
        // SAFETY: row r, columns n0..n1 of C are writable.
        unsafe { std::ptr::write_bytes(c.add(r * ldc + n0), 0, n1 - n0) };
    }
    let mut p0 = 0;
    while p0 < k {
        let kb = KB.min(k - p0);
        // Rows past k are read as row p0 with a zero coefficient (keeps the loop branch-free).
        let rows: [*const f32; KB] =
            std::array::from_fn(|q| b.wrapping_add((p0 + if q < kb { q } else { 0 }) * ldb));
        // SAFETY: a[p0 + q] is inside A's first row for q < kb (zero otherwise).
        let coef1: [__m512; KB] = std::array::from_fn(|q| {
            _mm512_set1_ps(if q < kb {
                unsafe { *a.add(p0 + q) }
            } else {
                0.0
            })
        });
        let mut j = n0;
        while j < full_end {
            // SAFETY: columns j..j+32 < n1 of the KB (valid) rows are readable.
            let bv: [[__m512; 2]; KB] = unsafe {
                std::array::from_fn(|q| {
                    [
                        _mm512_loadu_ps(rows[q].add(j)),
                        _mm512_loadu_ps(rows[q].add(j + 16)),
                    ]
                })
            };
            if m == 1 {
                // Decode: the KB coefficients stay in registers for the whole sweep.
                // SAFETY: C row 0 columns j..j+32 are inside the caller's region.
                unsafe {
                    let mut y0 = _mm512_loadu_ps(c.add(j));
                    let mut y1 = _mm512_loadu_ps(c.add(j + 16));
                    for (q, bq) in bv.iter().enumerate() {
                        y0 = _mm512_fmadd_ps(coef1[q], bq[0], y0);
                        y1 = _mm512_fmadd_ps(coef1[q], bq[1], y1);
                    }
                    _mm512_storeu_ps(c.add(j), y0);
                    _mm512_storeu_ps(c.add(j + 16), y1);
                }
                j += W;
                continue;
            }
            for r in 0..m {
                // SAFETY: C row r columns j..j+32 are inside the caller's region; a[r*k + p]
                // is inside A for p < k (coefficients of padded rows are zero).
                unsafe {
                    let y = c.add(r * ldc + j);
                    let mut y0 = _mm512_loadu_ps(y);
                    let mut y1 = _mm512_loadu_ps(y.add(16));
                    for (q, bq) in bv.iter().enumerate() {
                        let coef = if q < kb { *a.add(r * k + p0 + q) } else { 0.0 };
                        let av = _mm512_set1_ps(coef);
                        y0 = _mm512_fmadd_ps(av, bq[0], y0);
                        y1 = _mm512_fmadd_ps(av, bq[1], y1);
                    }
                    _mm512_storeu_ps(y, y0);
                    _mm512_storeu_ps(y.add(16), y1);
                }
            }
            j += W;
        }
        for j in full_end..n1 {
            for r in 0..m {
                let mut s = 0.0f32;
                for (q, row) in rows.iter().enumerate().take(kb) {
                    // SAFETY: (p0+q, j) is inside B and (r, p0+q) inside A.
                    s += unsafe { *a.add(r * k + p0 + q) * *row.add(j) };
                }
                // SAFETY: (r, j) is inside the caller's C region.
                unsafe { *c.add(r * ldc + j) += s };
            }
        }
        p0 += kb;
    }
}
