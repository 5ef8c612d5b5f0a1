//! Scalar GEMM micro-kernel (the reference tier) with the same packed-panel
//! contract as the SIMD kernels, so the one driver serves every tier.

pub const MR: usize = 4;
pub const NR: usize = 8;

/// C[0..4, 0..8] (+)= A_panel (k × 4, k-major) · B_panel (k × 8, k-major).
///
/// # Safety
/// `a` holds `k*4`, `b` holds `k*8` floats; `c` points to a writable 4 × 8 tile
/// with row stride `ldc`.
pub unsafe fn generic_mmm_f32_4x8(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    _prefetch: crate::kernels::frame::prefetch::Prefetch,
) {
    // SAFETY: the caller guarantees the panel sizes.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, k * MR),
            std::slice::from_raw_parts(b, k * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    for p in 0..k {
        let bp = &b[p * NR..p * NR + NR];
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = a[p * MR + i];
            for (acc, &bv) in row.iter_mut().zip(bp) {
                *acc += ai * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row i of the tile is NR writable floats at c + i*ldc.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
        for (d, &v) in dst.iter_mut().zip(row) {
            *d = if accumulate { *d + v } else { v };
        }
    }
}

/// Straightforward f64-accumulating GEMM over strided f32 inputs (tests only).
pub fn reference_gemm_f64(
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
        }
    }
    c
}
