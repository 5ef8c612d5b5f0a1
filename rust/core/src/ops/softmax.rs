//! softmax and log_softmax over one axis, numerically stable (the maximum is
//! subtracted first, so 1e30 and -1e30 do not overflow). A slice that is
//! entirely -inf (fully masked) gives zeros (softmax) or -inf (log_softmax),
//! never NaN. f32 on the SIMD kernels; f16/bf16 compute in f32; f64 in f64.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::rowwise;
use crate::kernels::isa;
use crate::shape::normalize_axis;
use crate::tensor::Tensor;

use super::data::{as_dtype, axis_to_last, contiguous_elements, new_tensor};

pub fn softmax(x: &Tensor, axis: isize) -> Result<Tensor> {
    softmax_impl(x, axis, false)
}

pub fn log_softmax(x: &Tensor, axis: isize) -> Result<Tensor> {
    softmax_impl(x, axis, true)
}

fn softmax_impl(x: &Tensor, axis: isize, log: bool) -> Result<Tensor> {
    let name = if log { "log_softmax" } else { "softmax" };
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(Error::dtype(
            name,
            format!("{name} needs a float tensor, got {dtype}"),
        ));
    }
    let axis = normalize_axis(name, axis, x.ndim())?;
    let (last, back) = axis_to_last(x, axis)?;
    let n = last.shape()[last.ndim() - 1];
    let shape = last.shape().to_vec();
    let out = match dtype {
        DType::F64 => {
            let src = contiguous_elements::<f64>(&last)?;
            new_tensor::<f64>(&shape, |out| {
                if n > 0 {
                    for (xr, or) in src.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                        softmax_row_f64(xr, or, log);
                    }
                }
                Ok(())
            })?
        }
        _ => {
            let f = as_dtype(&last, DType::F32)?;
            let src = contiguous_elements::<f32>(&f)?;
            let isa = isa();
            let out = new_tensor::<f32>(&shape, |out| {
                if let Some(rows) = out.len().checked_div(n) {
                    let per_task = rowwise::units_per_task(rows, n);
                    rowwise::for_each_chunk(out, n, per_task, |first, chunk| {
                        let xs = &src[first * n..first * n + chunk.len()];
                        rowwise::softmax_rows_f32(isa, xs, chunk, n, log);
                    });
                }
                Ok(())
            })?;
            as_dtype(&out, dtype)?
        }
    };
    out.permute(&back)?.contiguous()
}

fn softmax_row_f64(x: &[f64], out: &mut [f64], log: bool) {
    let m = x.iter().fold(
        f64::NEG_INFINITY,
        |a, &b| {
            if a.is_nan() || a > b {
                a
            } else {
                b
            }
        },
    );
    if m == f64::NEG_INFINITY {
        out.fill(if log { f64::NEG_INFINITY } else { 0.0 });
        return;
    }
    let s: f64 = x.iter().map(|&v| (v - m).exp()).sum();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = if log {
            v - m - s.ln()
        } else {
            (v - m).exp() / s
        };
    }
}
