//! Softmax and log-softmax of one contiguous row, stable (the row maximum is
//! subtracted first). A row whose maximum is -inf (every entry masked) has a
//! defined result: softmax all zeros, log_softmax all -inf; no NaN appears.

use super::math::{exp_f32, log_f32};
use super::reduce::{lane_sum_body, max_f32_body, max_f32_reference};

/// softmax (or log_softmax) of `x` into `out`, with the vectorizable exp.
#[inline(always)]
pub fn softmax_row_body(x: &[f32], out: &mut [f32], log: bool) {
    let m = max_f32_body(x);
    if m == f32::NEG_INFINITY {
        out.fill(if log { f32::NEG_INFINITY } else { 0.0 });
        return;
    }
    if log {
        let s = lane_sum_body(x, |v| exp_f32(v - m)) as f32;
        // (v - m) - log(s), not v - (m + log(s)): with m = 1e30 the latter loses log(s).
        let ls = log_f32(s);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - m) - ls;
        }
    } else {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp_f32(v - m);
        }
        let inv = (1.0 / lane_sum_body(out, |v| v)) as f32;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

/// The reference: `std` exp/ln and f64 sums.
pub fn softmax_row_reference(x: &[f32], out: &mut [f32], log: bool) {
    let m = max_f32_reference(x);
    if m == f32::NEG_INFINITY {
        out.fill(if log { f32::NEG_INFINITY } else { 0.0 });
        return;
    }
    let s: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
    for (o, &v) in out.iter_mut().zip(x) {
        let d = (v - m) as f64;
        *o = if log {
            (d - s.ln()) as f32
        } else {
            (d.exp() / s) as f32
        };
    }
}
