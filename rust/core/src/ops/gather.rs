//! Embedding lookup: rows of a [vocab, dim] table picked by integer ids.

use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::OutBuffer;
use crate::tensor::Tensor;

use super::data::as_dtype;

/// `weight[ids]`: shape `[*ids.shape, dim]`, weight's dtype (any). An id outside
/// `0..vocab` is an index error naming the id and the vocabulary size.
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    let &[vocab, dim] = weight.shape() else {
        return Err(Error::shape(
            OP,
            format!(
                "weight must have shape [vocab, dim], got {:?}",
                weight.shape()
            ),
        ));
    };
    if ids.dtype().is_float() || ids.dtype() == DType::Bool {
        return Err(Error::dtype(
            OP,
            format!("ids must be an integer tensor, got {}", ids.dtype()),
        ));
    }
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    let ids = as_dtype(ids, DType::I64)?.elements::<i64>()?;
    if let Some(&bad) = ids.iter().find(|&&id| id < 0 || id as u64 >= vocab as u64) {
        return Err(Error::index(
            OP,
            format!("id {bad} is out of range for a vocabulary of {vocab} rows"),
        ));
    }
    let table = weight.contiguous_bytes()?;
    let row = dim * weight.dtype().size();
    let mut buf = OutBuffer::new(ids.len() * row, false)?;
    if row > 0 {
        for (dst, &id) in buf.as_mut_slice().chunks_exact_mut(row).zip(&ids) {
            let at = id as usize * row;
            dst.copy_from_slice(&table[at..at + row]);
        }
    }
    Tensor::from_storage(Arc::new(buf.into_storage()), weight.dtype(), &shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_rows_and_rejects_bad_ids() {
        let w = Tensor::from_slice(&[0i16, 1, 10, 11, 20, 21], &[3, 2]).unwrap();
        let ids = Tensor::from_slice(&[2i32, 0, 2], &[3, 1]).unwrap();
        let r = embedding(&w, &ids).unwrap();
        assert_eq!(r.shape(), &[3, 1, 2]);
        assert_eq!(r.elements::<i16>().unwrap(), vec![20, 21, 0, 1, 20, 21]);
        for bad in [3i64, -1] {
            let ids = Tensor::from_slice(&[bad], &[1]).unwrap();
            let e = embedding(&w, &ids).unwrap_err().to_string();
            assert!(e.contains(&bad.to_string()) && e.contains('3'), "{e}");
        }
    }
}
