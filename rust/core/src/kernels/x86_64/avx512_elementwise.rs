//! AVX512 builds of the elementwise kernels: the bodies in
//! `generic::elementwise` compiled for 512-bit vectors.

use crate::kernels::generic::elementwise::{
    binary_body, unary_f32_body, Binary, BinaryScalar, Operand, Unary,
};

/// `out = op(x)` for f32.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn avx512_unary_f32(op: Unary, x: &[f32], out: &mut [f32]) {
    unary_f32_body(op, x, out)
}

/// `out = op(a, b)` with scalar operands broadcast.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL and FMA (see `kernels::dispatch`).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn avx512_binary<T: BinaryScalar>(
    op: Binary,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    out: &mut [T],
) {
    binary_body(op, a, b, out)
}
