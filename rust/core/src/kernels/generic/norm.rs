//! layer_norm and rms_norm of one contiguous row (the last dimension).
//! layer_norm is two-pass (mean, then the mean of squared deviations), so a
//! large common offset (values ~1e4 + noise) does not cancel the variance away.

use super::reduce::{lane_sum_body, sum_f32_reference};

/// Optional affine parameters of a norm, each of the row's length.
#[derive(Copy, Clone, Debug, Default)]
pub struct Affine<'a> {
    pub weight: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
}

#[inline(always)]
fn scale_row(x: &[f32], out: &mut [f32], shift: (f32, f32), scale: f32, affine: Affine<'_>) {
    // The shift comes as hi + lo: subtracting hi is exact for values near the
    // mean, so a mean of 1e4 does not cost the f32 rounding of the mean itself.
    let (hi, lo) = shift;
    match (affine.weight, affine.bias) {
        (Some(w), Some(b)) => {
            for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
                *o = ((v - hi) - lo) * scale * w + b;
            }
        }
        (Some(w), None) => {
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
                *o = ((v - hi) - lo) * scale * w;
            }
        }
        (None, Some(b)) => {
            for ((o, &v), &b) in out.iter_mut().zip(x).zip(b) {
                *o = ((v - hi) - lo) * scale + b;
            }
        }
        (None, None) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = ((v - hi) - lo) * scale;
            }
        }
    }
}

/// (x - mean) / sqrt(var + eps) * weight + bias.
#[inline(always)]
pub fn layer_norm_row_body(x: &[f32], out: &mut [f32], affine: Affine<'_>, eps: f32) {
    let n = x.len() as f64;
    // Summing x - x[0] (exact for values near x[0]) keeps the f32 lane sums small
    // when the row has a large common offset.
    let pivot = x.first().copied().unwrap_or(0.0);
    let mean = pivot as f64 + lane_sum_body(x, |v| v - pivot) / n;
    let hi = mean as f32;
    let lo = (mean - hi as f64) as f32;
    let var = lane_sum_body(x, |v| {
        let d = (v - hi) - lo;
        d * d
    }) / n;
    let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
    scale_row(x, out, (hi, lo), rstd, affine);
}

/// x / sqrt(mean(x^2) + eps) * weight (Hugging Face Llama's RMSNorm).
#[inline(always)]
pub fn rms_norm_row_body(x: &[f32], out: &mut [f32], weight: Option<&[f32]>, eps: f32) {
    let ms = lane_sum_body(x, |v| v * v) / x.len() as f64;
    let rstd = (1.0 / (ms + eps as f64).sqrt()) as f32;
    let affine = Affine { weight, bias: None };
    scale_row(x, out, (0.0, 0.0), rstd, affine);
}

/// The reference: f64 statistics.
pub fn layer_norm_row_reference(x: &[f32], out: &mut [f32], affine: Affine<'_>, eps: f32) {
    let n = x.len() as f64;
    let mean = sum_f32_reference(x, |v| v) / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let mut y = (v as f64 - mean) * rstd;
        if let Some(w) = affine.weight {
            y *= w[i] as f64;
        }
        if let Some(b) = affine.bias {
            y += b[i] as f64;
        }
        *o = y as f32;
    }
}

pub fn rms_norm_row_reference(x: &[f32], out: &mut [f32], weight: Option<&[f32]>, eps: f32) {
    let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let rstd = 1.0 / (ms + eps as f64).sqrt();
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let w = weight.map_or(1.0, |w| w[i] as f64);
        *o = (v as f64 * rstd * w) as f32;
    }
}
