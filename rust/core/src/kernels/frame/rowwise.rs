//! Drivers of the row-wise kernels (elementwise, reductions, softmax, norms):
//! the tier choice, made once per call, and the split of the output over the
//! runtime's pool. Work below [`PARALLEL_MIN`] elements stays on the calling
//! thread, where a pool hand-off would cost more than it saves.

use crate::dispatch_isa;
use crate::kernels::generic::{elementwise, norm, reduce, softmax};
use crate::kernels::Isa;

use super::threads::SendPtr;

#[cfg(target_arch = "x86_64")]
use crate::kernels::x86_64::{
    avx2_elementwise, avx2_norm, avx2_reduce, avx2_softmax, avx512_elementwise, avx512_norm,
    avx512_reduce, avx512_softmax,
};

pub use elementwise::{Binary, BinaryScalar, Operand, Unary};
pub use norm::Affine;
pub use reduce::ColumnReduce;

/// Elements below which a call runs single-threaded.
pub const PARALLEL_MIN: usize = 1 << 16;
/// Smallest piece of work handed to one pool task.
const TASK_MIN: usize = 1 << 14;

/// Units (rows, elements) per task for `units` units of `cost` elements each:
/// all of them when the work is small, else pieces of at least [`TASK_MIN`]
/// elements, about four per thread.
pub fn units_per_task(units: usize, cost: usize) -> usize {
    let total = units.saturating_mul(cost.max(1));
    let threads = super::threads::num_threads();
    if total < PARALLEL_MIN || threads <= 1 || units <= 1 {
        return units.max(1);
    }
    let target = (total / (threads * 4)).max(TASK_MIN);
    target.div_ceil(cost.max(1)).clamp(1, units)
}

/// Calls `f(first_unit, chunk)` for consecutive chunks of `out`, each holding
/// `per_task * unit_len` elements (the last may be shorter), on the pool when
/// there is more than one chunk.
pub fn for_each_chunk<T: Send>(
    out: &mut [T],
    unit_len: usize,
    per_task: usize,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    let chunk = (unit_len * per_task).max(1);
    if out.len() <= chunk {
        f(0, out);
        return;
    }
    let chunks = out.len().div_ceil(chunk);
    let len = out.len();
    let base = SendPtr(out.as_mut_ptr());
    super::threads::parallel_for(chunks, |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk i covers out[start .. start + n], disjoint from every other
        // chunk, and `out` outlives the parallel_for call.
        let c = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i * per_task, c)
    });
}

/// `out = op(x)` for f32 on the given tier. `isa` must come from
/// [`crate::kernels::isa`] (or be a tier [`Isa::is_supported`] confirmed).
pub fn unary_f32(isa: Isa, op: Unary, x: &[f32], out: &mut [f32]) {
    dispatch_isa!(isa,
        generic => elementwise::unary_f32_reference(op, x, out),
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_elementwise::avx2_unary_f32(op, x, out) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_elementwise::avx512_unary_f32(op, x, out) },
    )
}

/// `out = op(a, b)` on the given tier (the generic tier is the same body, scalar).
pub fn binary<T: BinaryScalar>(
    isa: Isa,
    op: Binary,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    out: &mut [T],
) {
    dispatch_isa!(isa,
        generic => elementwise::binary_body(op, a, b, out),
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_elementwise::avx2_binary(op, a, b, out) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_elementwise::avx512_binary(op, a, b, out) },
    )
}

/// Sum of each of `out.len()` equal rows of `x`, in f64.
pub fn sum_rows_f32(isa: Isa, x: &[f32], out: &mut [f64]) {
    dispatch_isa!(isa,
        generic => {
            let n = x.len() / out.len().max(1);
            for (o, row) in out.iter_mut().zip(x.chunks_exact(n.max(1))) {
                *o = reduce::sum_f32_reference(row, |v| v);
            }
        },
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_reduce::avx2_sum_rows_f32(x, out) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_reduce::avx512_sum_rows_f32(x, out) },
    )
}

/// Max (`max = true`) or min of each of `out.len()` equal rows; NaN propagates.
pub fn extreme_rows_f32(isa: Isa, x: &[f32], out: &mut [f32], max: bool) {
    dispatch_isa!(isa,
        generic => {
            let n = x.len() / out.len().max(1);
            for (o, row) in out.iter_mut().zip(x.chunks_exact(n.max(1))) {
                *o = if max { reduce::max_f32_reference(row) } else { reduce::min_f32_reference(row) };
            }
        },
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_reduce::avx2_extreme_rows_f32(x, out, max) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_reduce::avx512_extreme_rows_f32(x, out, max) },
    )
}

/// Reduces the rows of a [rows, acc.len()] block into `acc`.
pub fn columns_f32(isa: Isa, kind: ColumnReduce, x: &[f32], acc: &mut [f64]) {
    dispatch_isa!(isa,
        generic => reduce::columns_f32_body(kind, x, acc),
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_reduce::avx2_columns_f32(kind, x, acc) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_reduce::avx512_columns_f32(kind, x, acc) },
    )
}

/// softmax or log_softmax of each row of length `n > 0`.
pub fn softmax_rows_f32(isa: Isa, x: &[f32], out: &mut [f32], n: usize, log: bool) {
    dispatch_isa!(isa,
        generic => {
            for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                softmax::softmax_row_reference(xr, or, log);
            }
        },
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_softmax::avx2_softmax_rows_f32(x, out, n, log) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_softmax::avx512_softmax_rows_f32(x, out, n, log) },
    )
}

/// layer_norm of each row of length `n > 0`.
pub fn layer_norm_rows_f32(
    isa: Isa,
    x: &[f32],
    out: &mut [f32],
    n: usize,
    affine: Affine<'_>,
    eps: f32,
) {
    dispatch_isa!(isa,
        generic => {
            for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                norm::layer_norm_row_reference(xr, or, affine, eps);
            }
        },
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_norm::avx2_layer_norm_rows_f32(x, out, n, affine, eps) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_norm::avx512_layer_norm_rows_f32(x, out, n, affine, eps) },
    )
}

/// rms_norm of each row of length `n > 0`.
pub fn rms_norm_rows_f32(
    isa: Isa,
    x: &[f32],
    out: &mut [f32],
    n: usize,
    weight: Option<&[f32]>,
    eps: f32,
) {
    dispatch_isa!(isa,
        generic => {
            for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                norm::rms_norm_row_reference(xr, or, weight, eps);
            }
        },
        // SAFETY: this arm runs only on the Avx2 tier, which detection confirmed.
        avx2 => unsafe { avx2_norm::avx2_rms_norm_rows_f32(x, out, n, weight, eps) },
        // SAFETY: this arm runs only on the Avx512 tier, which detection confirmed.
        avx512 => unsafe { avx512_norm::avx512_rms_norm_rows_f32(x, out, n, weight, eps) },
    )
}

#[cfg(test)]
mod tests {
    //! Every SIMD tier the CPU has against the generic reference, on odd sizes.
    use super::*;

    const SIZES: [usize; 9] = [1, 2, 7, 15, 17, 33, 127, 257, 1500];

    fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tiers() -> Vec<Isa> {
        crate::kernels::dispatch::available()
            .into_iter()
            .filter(|&i| i != Isa::Generic)
            .collect()
    }

    fn close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= atol + rtol * w.abs();
            assert!(ok, "{what}[{i}]: got {g}, want {w}");
        }
    }

    #[test]
    fn unary_tiers_match_reference() {
        use Unary::*;
        for isa in tiers() {
            for op in [
                Exp, Log, Tanh, Erf, Gelu, GeluTanh, Silu, Relu, Sigmoid, Sqrt, Rsqrt, Neg, Abs,
            ] {
                for &n in &SIZES {
                    let mut x = data(n, n as u32, 12.0);
                    if matches!(op, Log | Sqrt | Rsqrt) {
                        x.iter_mut().for_each(|v| *v = v.abs() + 1e-3);
                    }
                    let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                    unary_f32(isa, op, &x, &mut got);
                    unary_f32(Isa::Generic, op, &x, &mut want);
                    close(&got, &want, 3e-7, 2e-6, &format!("{isa:?} {op:?} n={n}"));
                }
            }
        }
    }

    #[test]
    fn binary_tiers_match_reference() {
        use Binary::*;
        for isa in tiers() {
            for op in [Add, Sub, Mul, Div, Max, Min, Pow] {
                for &n in &SIZES {
                    let a = data(n, 1, 3.0);
                    let b = data(n, 2, 3.0);
                    for (oa, ob) in [
                        (Operand::Slice(&a[..]), Operand::Slice(&b[..])),
                        (Operand::Slice(&a[..]), Operand::Scalar(0.5)),
                        (Operand::Scalar(-1.5), Operand::Slice(&b[..])),
                    ] {
                        let (mut got, mut want) = (vec![0.0f32; n], vec![0.0f32; n]);
                        binary(isa, op, oa, ob, &mut got);
                        binary(Isa::Generic, op, oa, ob, &mut want);
                        close(&got, &want, 0.0, 0.0, &format!("{isa:?} {op:?}"));
                    }
                    let ai: Vec<i64> = a.iter().map(|&v| (v * 1e6) as i64).collect();
                    let (mut got, mut want) = (vec![0i64; n], vec![0i64; n]);
                    if op.takes_integers() {
                        binary(isa, op, Operand::Slice(&ai), Operand::Scalar(7), &mut got);
                        binary(
                            Isa::Generic,
                            op,
                            Operand::Slice(&ai),
                            Operand::Scalar(7),
                            &mut want,
                        );
                        assert_eq!(got, want);
                    }
                }
            }
        }
    }

    #[test]
    fn reduction_tiers_match_reference() {
        for isa in tiers() {
            for &n in &SIZES {
                for rows in [1, 3] {
                    let x = data(n * rows, n as u32 + 7, 100.0);
                    let (mut got, mut want) = (vec![0.0f64; rows], vec![0.0f64; rows]);
                    sum_rows_f32(isa, &x, &mut got);
                    sum_rows_f32(Isa::Generic, &x, &mut want);
                    for (g, w) in got.iter().zip(&want) {
                        // f32 lanes over blocks of 1024: error <= ~64 ulp of the abs sum.
                        assert!(
                            (g - w).abs() <= 1e-5 * 100.0 * n as f64,
                            "{isa:?} sum n={n}"
                        );
                    }
                    for max in [true, false] {
                        let (mut got, mut want) = (vec![0.0f32; rows], vec![0.0f32; rows]);
                        extreme_rows_f32(isa, &x, &mut got, max);
                        extreme_rows_f32(Isa::Generic, &x, &mut want, max);
                        assert_eq!(got, want);
                    }
                    for kind in [ColumnReduce::Sum, ColumnReduce::Max, ColumnReduce::Min] {
                        let init = match kind {
                            ColumnReduce::Sum => 0.0,
                            ColumnReduce::Max => f64::NEG_INFINITY,
                            ColumnReduce::Min => f64::INFINITY,
                        };
                        let (mut got, mut want) = (vec![init; n], vec![init; n]);
                        columns_f32(isa, kind, &x, &mut got);
                        reduce::columns_f32_body(kind, &x, &mut want);
                        assert_eq!(got, want);
                    }
                }
            }
        }
    }

    #[test]
    fn softmax_and_norm_tiers_match_reference() {
        for isa in tiers() {
            for &n in &SIZES {
                let x = data(n * 3, n as u32, 20.0);
                for log in [false, true] {
                    let (mut got, mut want) = (vec![0.0; 3 * n], vec![0.0; 3 * n]);
                    softmax_rows_f32(isa, &x, &mut got, n, log);
                    softmax_rows_f32(Isa::Generic, &x, &mut want, n, log);
                    close(
                        &got,
                        &want,
                        1e-6,
                        4e-6,
                        &format!("{isa:?} softmax log={log}"),
                    );
                }
                let w = data(n, 3, 2.0);
                let b = data(n, 4, 2.0);
                let affine = Affine {
                    weight: Some(&w),
                    bias: Some(&b),
                };
                let shifted: Vec<f32> = x.iter().map(|v| v + 1e4).collect();
                let (mut got, mut want) = (vec![0.0; 3 * n], vec![0.0; 3 * n]);
                layer_norm_rows_f32(isa, &shifted, &mut got, n, affine, 1e-5);
                layer_norm_rows_f32(Isa::Generic, &shifted, &mut want, n, affine, 1e-5);
                close(
                    &got,
                    &want,
                    2e-5,
                    1e-5,
                    &format!("{isa:?} layer_norm n={n}"),
                );
                rms_norm_rows_f32(isa, &x, &mut got, n, Some(&w), 1e-6);
                rms_norm_rows_f32(Isa::Generic, &x, &mut want, n, Some(&w), 1e-6);
                close(&got, &want, 1e-6, 2e-6, &format!("{isa:?} rms_norm n={n}"));
            }
        }
    }
}
