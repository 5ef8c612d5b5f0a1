//! Reductions over one axis (or all elements): sum, mean, max, min, argmax.
//!
//! f32 runs the SIMD kernels (lane accumulators, block totals in f64; see
//! `kernels::generic::reduce`). Other dtypes reduce in f64 (floats) or i64
//! (integers, bool). Result dtypes follow numpy: sum of integers/bool is i64,
//! mean of integers is f64, argmax is i64, otherwise the input dtype.
//! Empty reductions: sum 0, mean NaN; max, min and argmax raise a shape error.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::rowwise::{self, ColumnReduce};
use crate::kernels::frame::threads::num_threads;
use crate::kernels::{isa, Isa};
use crate::shape::{around, normalize_axis};
use crate::tensor::Tensor;

use super::data::{as_dtype, axis_to_last, contiguous_elements, new_tensor};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    ArgMax,
}

impl Reduce {
    pub fn name(self) -> &'static str {
        match self {
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
            Reduce::Max => "max",
            Reduce::Min => "min",
            Reduce::ArgMax => "argmax",
        }
    }
}

pub fn sum(x: &Tensor, axis: Option<isize>, keepdims: bool) -> Result<Tensor> {
    reduce(Reduce::Sum, x, axis, keepdims)
}
pub fn mean(x: &Tensor, axis: Option<isize>, keepdims: bool) -> Result<Tensor> {
    reduce(Reduce::Mean, x, axis, keepdims)
}
pub fn max(x: &Tensor, axis: Option<isize>, keepdims: bool) -> Result<Tensor> {
    reduce(Reduce::Max, x, axis, keepdims)
}
pub fn min(x: &Tensor, axis: Option<isize>, keepdims: bool) -> Result<Tensor> {
    reduce(Reduce::Min, x, axis, keepdims)
}
/// Index of the first maximum (the first NaN if any), as i64.
pub fn argmax(x: &Tensor, axis: Option<isize>, keepdims: bool) -> Result<Tensor> {
    reduce(Reduce::ArgMax, x, axis, keepdims)
}

/// Reduces over `axis` (None: every element).
pub fn reduce(kind: Reduce, x: &Tensor, axis: Option<isize>, keepdims: bool) -> Result<Tensor> {
    let name = kind.name();
    let (src, axis) = match axis {
        None => (x.reshape(&[-1])?, 0usize),
        Some(a) => (x.clone(), normalize_axis(name, a, x.ndim())?),
    };
    let shape = src.shape().to_vec();
    let (outer, n, inner) = around(&shape, axis);
    if n == 0 && outer * inner > 0 && !matches!(kind, Reduce::Sum | Reduce::Mean) {
        return Err(Error::shape(
            name,
            format!(
                "cannot take {name} over the empty axis {axis} of shape {:?} (no identity)",
                x.shape()
            ),
        ));
    }
    let out_shape: Vec<usize> = match (axis, keepdims) {
        _ if keepdims && src.ndim() != x.ndim() => vec![1; x.ndim()],
        (_, true) => {
            let mut s = shape.clone();
            s[axis] = 1;
            s
        }
        (_, false) => shape
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != axis)
            .map(|(_, &d)| d)
            .collect(),
    };
    let flat = match x.dtype() {
        DType::F32 => reduce_f32(kind, &src, axis, outer, n, inner)?,
        d => reduce_wide(kind, &src, axis, d)?,
    };
    flat.reshape(&out_shape.iter().map(|&d| d as isize).collect::<Vec<_>>())
}

/// Rows at least this long are split across the pool when there are fewer rows than threads.
const SPLIT_ROW: usize = 1 << 18;

/// Sum (× scale), max or min of one long row, in parts of whole accumulation blocks on
/// the pool; NaN propagates through max and min as in the row kernels.
fn long_row_f32(isa: Isa, kind: Reduce, row: &[f32], scale: f64) -> f32 {
    let part = (row.len() / (num_threads() * 4))
        .next_multiple_of(crate::kernels::generic::reduce::BLOCK)
        .max(1);
    let mut partial = vec![0.0f64; row.len().div_ceil(part)];
    rowwise::for_each_chunk(&mut partial, 1, 1, |i, slot| {
        let xs = &row[i * part..((i + 1) * part).min(row.len())];
        slot[0] = match kind {
            Reduce::Max | Reduce::Min => {
                let mut e = [0.0f32];
                rowwise::extreme_rows_f32(isa, xs, &mut e, kind == Reduce::Max);
                f64::from(e[0])
            }
            _ => {
                let mut t = [0.0f64];
                rowwise::sum_rows_f32(isa, xs, &mut t);
                t[0]
            }
        };
    });
    match kind {
        Reduce::Max | Reduce::Min => {
            let pick = |a: f64, b: f64| match kind {
                _ if a.is_nan() || b.is_nan() => f64::NAN,
                Reduce::Max => a.max(b),
                _ => a.min(b),
            };
            partial.into_iter().reduce(pick).unwrap_or(f64::NAN) as f32
        }
        _ => (partial.iter().sum::<f64>() * scale) as f32,
    }
}

/// f32 on the SIMD kernels; returns outer * inner values (flat).
fn reduce_f32(
    kind: Reduce,
    x: &Tensor,
    axis: usize,
    outer: usize,
    n: usize,
    inner: usize,
) -> Result<Tensor> {
    let isa = isa();
    let rows = outer * inner;
    if kind == Reduce::ArgMax {
        let (last, _) = axis_to_last(x, axis)?;
        let data = contiguous_elements::<f32>(&last)?;
        let mut maxima = vec![0.0f32; rows];
        if n > 0 {
            rowwise::extreme_rows_f32(isa, &data, &mut maxima, true);
        }
        return new_tensor::<i64>(&[rows], |out| {
            for (r, o) in out.iter_mut().enumerate() {
                let row = &data[r * n..(r + 1) * n];
                let m = maxima[r];
                let pos = if m.is_nan() {
                    row.iter().position(|v| v.is_nan())
                } else {
                    row.iter().position(|&v| v == m)
                };
                *o = pos.unwrap_or(0) as i64;
            }
            Ok(())
        });
    }
    let data = contiguous_elements::<f32>(x)?;
    let scale = if kind == Reduce::Mean {
        1.0 / n as f64
    } else {
        1.0
    };
    new_tensor::<f32>(&[rows], |out| {
        if rows == 0 {
            return Ok(());
        }
        if n == 0 {
            out.fill(if kind == Reduce::Mean { f32::NAN } else { 0.0 });
            return Ok(());
        }
        if inner == 1 && rows < num_threads() && n >= SPLIT_ROW {
            // Fewer rows than threads, and long: each row is reduced in parts on the pool
            // (one task per row would leave threads idle, and a whole-tensor sum is one row).
            for (r, o) in out.iter_mut().enumerate() {
                *o = long_row_f32(isa, kind, &data[r * n..(r + 1) * n], scale);
            }
        } else if inner == 1 {
            let per_task = rowwise::units_per_task(rows, n);
            rowwise::for_each_chunk(out, 1, per_task, |first, chunk| {
                let xs = &data[first * n..(first + chunk.len()) * n];
                match kind {
                    Reduce::Max | Reduce::Min => {
                        rowwise::extreme_rows_f32(isa, xs, chunk, kind == Reduce::Max)
                    }
                    _ => {
                        let mut sums = vec![0.0f64; chunk.len()];
                        rowwise::sum_rows_f32(isa, xs, &mut sums);
                        for (o, s) in chunk.iter_mut().zip(sums) {
                            *o = (s * scale) as f32;
                        }
                    }
                }
            });
        } else {
            let (col, init) = match kind {
                Reduce::Max => (ColumnReduce::Max, f64::NEG_INFINITY),
                Reduce::Min => (ColumnReduce::Min, f64::INFINITY),
                _ => (ColumnReduce::Sum, 0.0),
            };
            let per_task = rowwise::units_per_task(outer, n * inner);
            rowwise::for_each_chunk(out, inner, per_task, |first, chunk| {
                let mut acc = vec![init; inner];
                for (k, o) in chunk.chunks_mut(inner).enumerate() {
                    let base = (first + k) * n * inner;
                    acc.fill(init);
                    rowwise::columns_f32(isa, col, &data[base..base + n * inner], &mut acc);
                    for (o, &a) in o.iter_mut().zip(&acc) {
                        *o = (a * scale) as f32;
                    }
                }
            });
        }
        Ok(())
    })
}

/// Every other dtype: rows gathered along the axis and reduced in f64 or i64.
fn reduce_wide(kind: Reduce, x: &Tensor, axis: usize, dtype: DType) -> Result<Tensor> {
    let (last, _) = axis_to_last(x, axis)?;
    let n = last.shape().last().copied().unwrap_or(1);
    let rows: usize = last.shape()[..last.ndim() - 1].iter().product();
    if dtype.is_float() {
        let vals = contiguous_elements::<f64>(&as_dtype(&last, DType::F64)?)?.into_owned();
        let cmp_gt = |a: f64, b: f64| a.is_nan() && !b.is_nan() || a > b;
        let cmp_lt = |a: f64, b: f64| a.is_nan() && !b.is_nan() || a < b;
        let pick = |row: &[f64], better: &dyn Fn(f64, f64) -> bool| -> (usize, f64) {
            let mut best = 0;
            for i in 1..row.len() {
                if !row[best].is_nan() && better(row[i], row[best]) {
                    best = i;
                }
            }
            (best, row[best])
        };
        let row = |r: usize| &vals[r * n..(r + 1) * n];
        match kind {
            Reduce::ArgMax => new_tensor::<i64>(&[rows], |o| {
                o.iter_mut()
                    .enumerate()
                    .for_each(|(r, v)| *v = pick(row(r), &cmp_gt).0 as i64);
                Ok(())
            }),
            _ => {
                let out = new_tensor::<f64>(&[rows], |o| {
                    for (r, v) in o.iter_mut().enumerate() {
                        *v = match kind {
                            Reduce::Sum => row(r).iter().sum(),
                            Reduce::Mean => row(r).iter().sum::<f64>() / n as f64,
                            Reduce::Max => pick(row(r), &cmp_gt).1,
                            _ => pick(row(r), &cmp_lt).1,
                        };
                    }
                    Ok(())
                })?;
                as_dtype(&out, dtype)
            }
        }
    } else {
        let vals = contiguous_elements::<i64>(&as_dtype(&last, DType::I64)?)?.into_owned();
        let row = |r: usize| &vals[r * n..(r + 1) * n];
        let first_best = |row: &[i64], max: bool| -> (usize, i64) {
            let mut best = 0;
            for i in 1..row.len() {
                if (max && row[i] > row[best]) || (!max && row[i] < row[best]) {
                    best = i;
                }
            }
            (best, row[best])
        };
        match kind {
            Reduce::Mean => new_tensor::<f64>(&[rows], |o| {
                for (r, v) in o.iter_mut().enumerate() {
                    *v = row(r).iter().map(|&x| x as f64).sum::<f64>() / n as f64;
                }
                Ok(())
            }),
            Reduce::Sum => new_tensor::<i64>(&[rows], |o| {
                for (r, v) in o.iter_mut().enumerate() {
                    *v = row(r).iter().fold(0i64, |a, &b| a.wrapping_add(b));
                }
                Ok(())
            }),
            Reduce::ArgMax => new_tensor::<i64>(&[rows], |o| {
                for (r, v) in o.iter_mut().enumerate() {
                    *v = first_best(row(r), true).0 as i64;
                }
                Ok(())
            }),
            _ => {
                let out = new_tensor::<i64>(&[rows], |o| {
                    for (r, v) in o.iter_mut().enumerate() {
                        *v = first_best(row(r), kind == Reduce::Max).1;
                    }
                    Ok(())
                })?;
                // Values come from the input's own range, so the cast back is exact.
                as_dtype(&out, dtype)
            }
        }
    }
}
