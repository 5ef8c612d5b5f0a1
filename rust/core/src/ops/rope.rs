//! Rotary position embedding on x of layout [batch, seq, heads, head_dim].
//!
//! Token `s` of batch `b` sits at `positions[b, s]` (or `offset + s`). Pair `i`
//! (of `rotary_dim / 2`) turns by `pos * inv_freq[i]`, with
//! `inv_freq[i] = theta^(-2i / rotary_dim)` unless given. The angle is formed
//! and its sine and cosine taken in f64, so positions near 1e5 keep f32
//! accuracy. Half-rotation form (Hugging Face Llama `rotate_half`): pair i is
//! (x[i], x[i + rotary_dim/2]); interleaved form: (x[2i], x[2i + 1]). Dims past
//! `rotary_dim` pass through. f32 (f16/bf16 compute in f32); output contiguous.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::rowwise;
use crate::tensor::Tensor;

use super::data::{as_dtype, contiguous_elements, new_tensor};

/// Options of [`rope`]; `Default` is Llama's (theta 10000, half rotation, full head_dim).
#[derive(Clone, Debug)]
pub struct RopeOptions<'a> {
    /// i64/i32 positions of shape [batch, seq] (or [seq], shared by the batch).
    pub positions: Option<&'a Tensor>,
    /// Position of token 0 when `positions` is None.
    pub offset: i64,
    pub theta: f64,
    pub interleaved: bool,
    /// Explicit inverse frequencies (float, length rotary_dim / 2), e.g. Llama 3 scaling.
    pub inv_freq: Option<&'a Tensor>,
    pub rotary_dim: Option<usize>,
}

impl Default for RopeOptions<'_> {
    fn default() -> Self {
        RopeOptions {
            positions: None,
            offset: 0,
            theta: 10_000.0,
            interleaved: false,
            inv_freq: None,
            rotary_dim: None,
        }
    }
}

pub fn rope(x: &Tensor, opts: &RopeOptions<'_>) -> Result<Tensor> {
    const OP: &str = "rope";
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(Error::dtype(
            OP,
            format!("x must be a float tensor, got {dtype}"),
        ));
    }
    let &[batch, seq, heads, dim] = x.shape() else {
        return Err(Error::shape(
            OP,
            format!(
                "x must have shape [batch, seq, heads, head_dim], got {:?}",
                x.shape()
            ),
        ));
    };
    let rd = opts.rotary_dim.unwrap_or(dim);
    if !rd.is_multiple_of(2) || rd > dim {
        return Err(Error::shape(
            OP,
            format!("rotary_dim {rd} must be even and at most head_dim {dim}"),
        ));
    }
    let half = rd / 2;
    let inv_freq: Vec<f64> = match opts.inv_freq {
        Some(t) => {
            if !t.dtype().is_float() || t.shape() != [half] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "inv_freq must be a float tensor of shape [{half}] (rotary_dim / 2), got {} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            contiguous_elements::<f64>(&as_dtype(t, DType::F64)?)?.into_owned()
        }
        None => {
            if opts.theta.is_nan() || opts.theta <= 0.0 {
                return Err(Error::shape(
                    OP,
                    format!("theta must be > 0, got {}", opts.theta),
                ));
            }
            (0..half)
                .map(|i| opts.theta.powf(-((2 * i) as f64) / rd as f64))
                .collect()
        }
    };
    let positions: Option<Vec<i64>> = match opts.positions {
        Some(p) => {
            if p.dtype().is_float() || p.dtype() == DType::Bool {
                return Err(Error::dtype(
                    OP,
                    format!("positions must be an integer tensor, got {}", p.dtype()),
                ));
            }
            let p = if p.shape() == [seq] {
                p.expand(&[batch, seq])?
            } else {
                p.clone()
            };
            if p.shape() != [batch, seq] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "positions of shape {:?} do not match [batch, seq] = [{batch}, {seq}]",
                        p.shape()
                    ),
                ));
            }
            Some(as_dtype(&p, DType::I64)?.elements::<i64>()?)
        }
        None => None,
    };
    let xf = as_dtype(x, DType::F32)?;
    let src = contiguous_elements::<f32>(&xf)?;
    let token = heads * dim;
    let out = new_tensor::<f32>(x.shape(), |out| {
        if out.is_empty() {
            return Ok(());
        }
        let tokens = batch * seq;
        let per_task = rowwise::units_per_task(tokens, token);
        rowwise::for_each_chunk(out, token, per_task, |first, chunk| {
            let mut cos = vec![0.0f32; half];
            let mut sin = vec![0.0f32; half];
            for (k, o) in chunk.chunks_mut(token).enumerate() {
                let t = first + k;
                let pos = match &positions {
                    Some(p) => p[t],
                    None => opts.offset + (t % seq) as i64,
                };
                for i in 0..half {
                    let (s, c) = (pos as f64 * inv_freq[i]).sin_cos();
                    cos[i] = c as f32;
                    sin[i] = s as f32;
                }
                let xs = &src[t * token..(t + 1) * token];
                for (xr, or) in xs.chunks_exact(dim).zip(o.chunks_exact_mut(dim)) {
                    rotate(xr, or, &cos, &sin, opts.interleaved);
                }
            }
        });
        Ok(())
    })?;
    as_dtype(&out, dtype)
}

/// One head vector: rotates the first `2 * cos.len()` dims, copies the rest.
fn rotate(x: &[f32], out: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    let rd = 2 * half;
    if interleaved {
        for i in 0..half {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            out[2 * i] = a * cos[i] - b * sin[i];
            out[2 * i + 1] = b * cos[i] + a * sin[i];
        }
    } else {
        let (x1, x2) = x[..rd].split_at(half);
        let (o1, o2) = out[..rd].split_at_mut(half);
        for i in 0..half {
            o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
            o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
        }
    }
    out[rd..].copy_from_slice(&x[rd..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_pairs_and_passes_the_rest() {
        // One token at position 1, head_dim 4, rotary_dim 2, theta irrelevant for pair 0.
        let x = Tensor::from_slice(&[1.0f32, 0.0, 5.0, 6.0], &[1, 1, 1, 4]).unwrap();
        let opts = RopeOptions {
            offset: 1,
            rotary_dim: Some(2),
            ..Default::default()
        };
        let r = rope(&x, &opts).unwrap().elements::<f32>().unwrap();
        assert!((r[0] - 1f32.cos()).abs() < 1e-7 && (r[1] - 1f32.sin()).abs() < 1e-7);
        assert_eq!(&r[2..], &[5.0, 6.0]);
        let bad = RopeOptions {
            rotary_dim: Some(3),
            ..Default::default()
        };
        assert!(rope(&x, &bad).is_err());
    }
}
