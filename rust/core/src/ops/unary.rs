//! Elementwise unary functions: exp, log, tanh, erf, gelu, gelu_tanh, silu,
//! relu, sigmoid, sqrt, rsqrt, neg, abs. Float dtypes for all (f16/bf16 compute
//! in f32); neg, abs and relu also for integers (wrapping like numpy).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::rowwise::{self, Unary};
use crate::kernels::generic::elementwise::{unary_f64, unary_i64};
use crate::kernels::isa;
use crate::tensor::Tensor;

use super::data::{as_dtype, contiguous_elements, new_tensor};

/// `op(x)` elementwise; the result is contiguous with x's shape and dtype.
pub fn unary(op: Unary, x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let shape = x.shape().to_vec();
    match dtype {
        DType::F32 => {
            let src = contiguous_elements::<f32>(x)?;
            let isa = isa();
            new_tensor::<f32>(&shape, |out| {
                let per_task = rowwise::units_per_task(out.len(), 1);
                rowwise::for_each_chunk(out, 1, per_task, |start, chunk| {
                    rowwise::unary_f32(isa, op, &src[start..start + chunk.len()], chunk)
                });
                Ok(())
            })
        }
        DType::F16 | DType::BF16 => as_dtype(&unary(op, &x.cast(DType::F32)?)?, dtype),
        DType::F64 => {
            let src = contiguous_elements::<f64>(x)?;
            new_tensor::<f64>(&shape, |out| {
                unary_f64(op, &src, out);
                Ok(())
            })
        }
        DType::Bool => Err(Error::dtype(
            op.name(),
            format!("{} is not defined for bool tensors", op.name()),
        )),
        _ if !op.takes_integers() => Err(Error::dtype(
            op.name(),
            format!(
                "{} needs a float tensor, got {dtype} (cast with astype first)",
                op.name()
            ),
        )),
        _ => {
            let wide = as_dtype(x, DType::I64)?;
            let src = contiguous_elements::<i64>(&wide)?;
            let out = new_tensor::<i64>(&shape, |out| {
                unary_i64(op, &src, out);
                Ok(())
            })?;
            as_dtype(&out, dtype)
        }
    }
}

/// `op(x)` written over x's own elements when x is f32, contiguous and the
/// only handle on its storage (the executor's in-place steps); otherwise x
/// comes back untouched as `Err`.
pub fn unary_in_place(op: Unary, mut x: Tensor) -> std::result::Result<Tensor, Tensor> {
    let isa = isa();
    let Some(data) = x.unique_elements_mut::<f32>() else {
        return Err(x);
    };
    let per_task = rowwise::units_per_task(data.len(), 1);
    rowwise::for_each_chunk(data, 1, per_task, |_, chunk| {
        // The kernels read and write distinct slices: stage each piece in L1.
        let mut tmp = [0f32; IN_PLACE_TILE];
        for piece in chunk.chunks_mut(IN_PLACE_TILE) {
            let src = &mut tmp[..piece.len()];
            src.copy_from_slice(piece);
            rowwise::unary_f32(isa, op, src, piece);
        }
    });
    Ok(x)
}

/// Elements staged per step by the in-place ops (16 KiB of f32).
pub(crate) const IN_PLACE_TILE: usize = 4096;

macro_rules! unary_fns {
    ($($name:ident => $op:ident),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "(x)` elementwise.")]
            pub fn $name(x: &Tensor) -> Result<Tensor> {
                unary(Unary::$op, x)
            }
        )*
    };
}

unary_fns!(
    exp => Exp, log => Log, tanh => Tanh, erf => Erf, gelu => Gelu, gelu_tanh => GeluTanh,
    silu => Silu, relu => Relu, sigmoid => Sigmoid, sqrt => Sqrt, rsqrt => Rsqrt,
    neg => Neg, abs => Abs,
);
