//! layer_norm and rms_norm over the last dimension. f32 on the SIMD kernels
//! (f16/bf16 compute in f32 and round back); weight and bias are 1-d of the
//! last dimension's size, any float dtype.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::rowwise::{self, Affine};
use crate::kernels::isa;
use crate::tensor::Tensor;

use super::data::{as_dtype, contiguous_elements, new_tensor};

/// (x - mean) / sqrt(var + eps) * weight + bias over the last dimension (biased variance).
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    norm("layer_norm", x, weight, bias, eps)
}

/// x / sqrt(mean(x^2) + eps) * weight over the last dimension (Hugging Face Llama RMSNorm).
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    norm("rms_norm", x, weight, None, eps)
}

fn param(op: &str, what: &str, t: Option<&Tensor>, n: usize) -> Result<Option<Vec<f32>>> {
    let Some(t) = t else { return Ok(None) };
    if !t.dtype().is_float() {
        return Err(Error::dtype(
            op,
            format!("{what} must be a float tensor, got {}", t.dtype()),
        ));
    }
    if t.shape() != [n] {
        return Err(Error::shape(
            op,
            format!(
                "{what} of shape {:?} does not match the normalized dimension {n}",
                t.shape()
            ),
        ));
    }
    Ok(Some(
        contiguous_elements::<f32>(&as_dtype(t, DType::F32)?)?.into_owned(),
    ))
}

fn norm(
    op: &str,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(Error::dtype(
            op,
            format!("{op} needs a float tensor, got {dtype}"),
        ));
    }
    if x.ndim() == 0 {
        return Err(Error::shape(
            op,
            "needs at least one dimension, got a 0-d tensor",
        ));
    }
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::shape(op, format!("eps must be >= 0, got {eps}")));
    }
    let n = x.shape()[x.ndim() - 1];
    let w = param(op, "weight", weight, n)?;
    let b = param(op, "bias", bias, n)?;
    let xf = as_dtype(x, DType::F32)?;
    let src = contiguous_elements::<f32>(&xf)?;
    let isa = isa();
    let eps = eps as f32;
    let out = new_tensor::<f32>(x.shape(), |out| {
        if n == 0 || out.is_empty() {
            return Ok(());
        }
        let rows = out.len() / n;
        let per_task = rowwise::units_per_task(rows, n);
        rowwise::for_each_chunk(out, n, per_task, |first, chunk| {
            let xs = &src[first * n..first * n + chunk.len()];
            if op == "layer_norm" {
                let affine = Affine {
                    weight: w.as_deref(),
                    bias: b.as_deref(),
                };
                rowwise::layer_norm_rows_f32(isa, xs, chunk, n, affine, eps);
            } else {
                rowwise::rms_norm_rows_f32(isa, xs, chunk, n, w.as_deref(), eps);
            }
        });
        Ok(())
    })?;
    as_dtype(&out, dtype)
}
