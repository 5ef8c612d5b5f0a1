//! AVX2 build of the row softmax in `generic::softmax`.

use crate::kernels::generic::softmax::softmax_row_body;

/// softmax (or log_softmax) of each row of length `n`; `n > 0`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_softmax_rows_f32(x: &[f32], out: &mut [f32], n: usize, log: bool) {
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        softmax_row_body(xr, or, log);
    }
}
