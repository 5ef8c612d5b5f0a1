//! AVX2 builds of the f32 reductions in `generic::reduce`.

use crate::kernels::generic::reduce::{
    columns_f32_body, max_f32_body, min_f32_body, row_sum_body, ColumnReduce,
};

/// Sum of each row of `x` (rows of `out.len()` equal parts), in f64.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_sum_rows_f32(x: &[f32], out: &mut [f64]) {
    let n = x.len() / out.len().max(1);
    for (o, row) in out.iter_mut().zip(x.chunks_exact(n.max(1))) {
        *o = row_sum_body(row);
    }
}

/// Max (NaN-propagating) or min of each row of `x`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_extreme_rows_f32(x: &[f32], out: &mut [f32], max: bool) {
    let n = x.len() / out.len().max(1);
    for (o, row) in out.iter_mut().zip(x.chunks_exact(n.max(1))) {
        *o = if max {
            max_f32_body(row)
        } else {
            min_f32_body(row)
        };
    }
}

/// Column reduction of a [rows, acc.len()] block into `acc`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_columns_f32(kind: ColumnReduce, x: &[f32], acc: &mut [f64]) {
    columns_f32_body(kind, x, acc)
}
