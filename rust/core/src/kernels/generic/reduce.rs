//! Reductions of contiguous f32 runs: sum (with a mapping), max, min, and the
//! column form (reduce rows of a [n, inner] block into `inner` accumulators).
//!
//! Accuracy: `lane_sum_body` keeps 16 independent f32 accumulators (one SIMD
//! register on AVX-512, two on AVX2) over blocks of [`BLOCK`] elements and adds
//! the block totals in f64, so the rounding error grows with BLOCK / 16, not
//! with the row length. The references accumulate in f64.

use crate::kernels::frame::prefetch::stream_ahead;

/// Elements per block whose lane totals are added in f64.
pub const BLOCK: usize = 1024;
const LANES: usize = 16;

/// sum(f(x[i])) with lane accumulators; returned in f64.
#[inline(always)]
pub fn lane_sum_body(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum::<false>(x, f)
}

/// The sum of one row for the SIMD tiers: rows of at least [`STREAMING_ROW`] elements,
/// read from memory rather than cache, prefetch ahead of the stream.
#[inline(always)]
pub fn row_sum_body(row: &[f32]) -> f64 {
    if row.len() >= STREAMING_ROW {
        lane_sum::<true>(row, |v| v)
    } else {
        lane_sum::<false>(row, |v| v)
    }
}

/// Rows at least this long (in elements) are summed with prefetch (`row_sum_body`).
pub const STREAMING_ROW: usize = 64 * 1024;

#[inline(always)]
fn lane_sum<const STREAM: bool>(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            if STREAM {
                stream_ahead(c.as_ptr().cast());
            }
            for j in 0..LANES {
                acc[j] += f(c[j]);
            }
        }
        for (j, &v) in tail.iter().enumerate() {
            acc[j] += f(v);
        }
        // Pairwise combine of the lanes.
        let mut width = LANES / 2;
        while width > 0 {
            for j in 0..width {
                acc[j] += acc[j + width];
            }
            width /= 2;
        }
        total += acc[0] as f64;
    }
    total
}

/// The reference: serial f64 accumulation.
pub fn sum_f32_reference(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    x.iter().map(|&v| f(v) as f64).sum()
}

#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn min_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
fn lane_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] = f(acc[j], c[j]);
        }
    }
    let mut r = init;
    for &v in tail.iter().chain(acc.iter()) {
        r = f(r, v);
    }
    r
}

/// Largest element, NaN if any element is NaN, -inf for an empty run.
#[inline(always)]
pub fn max_f32_body(x: &[f32]) -> f32 {
    lane_fold(x, f32::NEG_INFINITY, max_nan)
}

/// Smallest element, NaN if any element is NaN, +inf for an empty run.
#[inline(always)]
pub fn min_f32_body(x: &[f32]) -> f32 {
    lane_fold(x, f32::INFINITY, min_nan)
}

pub fn max_f32_reference(x: &[f32]) -> f32 {
    x.iter().fold(f32::NEG_INFINITY, |a, &b| max_nan(a, b))
}

pub fn min_f32_reference(x: &[f32]) -> f32 {
    x.iter().fold(f32::INFINITY, |a, &b| min_nan(a, b))
}

/// Which column reduction.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ColumnReduce {
    Sum,
    Max,
    Min,
}

/// Reduces `x` ([rows, acc.len()], row-major) over its rows into `acc`, which
/// holds the running values (sums in f64, so long columns stay accurate).
#[inline(always)]
pub fn columns_f32_body(kind: ColumnReduce, x: &[f32], acc: &mut [f64]) {
    let inner = acc.len();
    if inner == 0 {
        return;
    }
    for row in x.chunks_exact(inner) {
        match kind {
            ColumnReduce::Sum => {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            ColumnReduce::Max => {
                for (a, &v) in acc.iter_mut().zip(row) {
                    let v = v as f64;
                    *a = if a.is_nan() || *a > v { *a } else { v };
                }
            }
            ColumnReduce::Min => {
                for (a, &v) in acc.iter_mut().zip(row) {
                    let v = v as f64;
                    *a = if a.is_nan() || *a < v { *a } else { v };
                }
            }
        }
    }
}
