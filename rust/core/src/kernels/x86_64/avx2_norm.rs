//! AVX2 builds of the row norms in `generic::norm`.

use crate::kernels::generic::norm::{layer_norm_row_body, rms_norm_row_body, Affine};

/// layer_norm of each row of length `n`; `n > 0`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_layer_norm_rows_f32(
    x: &[f32],
    out: &mut [f32],
    n: usize,
    affine: Affine<'_>,
    eps: f32,
) {
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        layer_norm_row_body(xr, or, affine, eps);
    }
}

/// rms_norm of each row of length `n`; `n > 0`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_rms_norm_rows_f32(
    x: &[f32],
    out: &mut [f32],
    n: usize,
    weight: Option<&[f32]>,
    eps: f32,
) {
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        rms_norm_row_body(xr, or, weight, eps);
    }
}
