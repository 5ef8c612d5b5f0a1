//! Concatenation along one axis, any dtype (a byte copy).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::shape::{around, normalize_axis, numel};
use crate::storage::OutBuffer;
use crate::tensor::Tensor;

/// Joins `tensors` (same dtype and rank, equal sizes except along `axis`).
pub fn concat(tensors: &[Tensor], axis: isize) -> Result<Tensor> {
    const OP: &str = "concat";
    let Some(first) = tensors.first() else {
        return Err(Error::shape(OP, "needs at least one tensor"));
    };
    let dtype = first.dtype();
    let ndim = first.ndim();
    let axis = normalize_axis(OP, axis, ndim)?;
    let mut shape = first.shape().to_vec();
    shape[axis] = 0;
    for (i, t) in tensors.iter().enumerate() {
        if t.dtype() != dtype {
            return Err(Error::dtype(
                OP,
                format!("tensor {i} is {}, tensor 0 is {dtype}", t.dtype()),
            ));
        }
        let same = t.ndim() == ndim
            && t.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(d, (a, b))| d == axis || a == b);
        if !same {
            return Err(Error::shape(
                OP,
                format!(
                    "tensor {i} has shape {:?}, incompatible with {:?} along axis {axis}",
                    t.shape(),
                    first.shape()
                ),
            ));
        }
        shape[axis] += t.shape()[axis];
    }
    let size = dtype.size();
    let (outer, _, inner) = around(&shape, axis);
    let bytes = numel(&shape)? * size;
    let mut buf = OutBuffer::new(bytes, false)?;
    let parts: Vec<_> = tensors
        .iter()
        .map(|t| t.contiguous_bytes())
        .collect::<Result<_>>()?;
    let widths: Vec<usize> = tensors
        .iter()
        .map(|t| t.shape()[axis] * inner * size)
        .collect();
    let dst = buf.as_mut_slice();
    let mut at = 0;
    for o in 0..outer {
        for (part, &w) in parts.iter().zip(&widths) {
            dst[at..at + w].copy_from_slice(&part[o * w..(o + 1) * w]);
            at += w;
        }
    }
    Tensor::from_storage(Arc::new(buf.into_storage()), dtype, &shape)
}
