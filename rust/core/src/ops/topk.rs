//! top-k along one axis: the k largest (or smallest) values, sorted, with their
//! i64 indices. Ties go to the lower index. NaN counts as larger than every
//! number (like torch), so it comes first with `largest` and last without.

use std::cmp::Ordering;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::with_element_type;

use super::data::{as_dtype, axis_to_last, contiguous_elements, new_tensor};

/// (values, indices), both of x's shape with `axis` shortened to `k`.
pub fn topk(x: &Tensor, k: usize, axis: isize, largest: bool) -> Result<(Tensor, Tensor)> {
    const OP: &str = "topk";
    if x.dtype() == DType::Bool {
        return Err(Error::dtype(OP, "topk is not defined for bool tensors"));
    }
    let axis = normalize_axis(OP, axis, x.ndim())?;
    let n = x.shape()[axis];
    if k > n {
        return Err(Error::shape(
            OP,
            format!(
                "k={k} is larger than the size {n} of axis {axis} (shape {:?})",
                x.shape()
            ),
        ));
    }
    let (last, back) = axis_to_last(x, axis)?;
    let mut out_shape = last.shape().to_vec();
    *out_shape.last_mut().unwrap_or(&mut 0) = k;
    let rows: usize = out_shape[..out_shape.len() - 1].iter().product();
    // Sort keys: f64 for floats, i64 for integers (exact for all of them).
    let order: Vec<usize> = if x.dtype().is_float() {
        let keys = contiguous_elements::<f64>(&as_dtype(&last, DType::F64)?)?.into_owned();
        select_rows(rows, n, k, largest, |i, j| {
            let (a, b) = (keys[i], keys[j]);
            a.partial_cmp(&b)
                .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
        })
    } else {
        let keys = contiguous_elements::<i64>(&as_dtype(&last, DType::I64)?)?.into_owned();
        select_rows(rows, n, k, largest, |i, j| keys[i].cmp(&keys[j]))
    };
    let indices = new_tensor::<i64>(&out_shape, |o| {
        for (v, &flat) in o.iter_mut().zip(&order) {
            *v = (flat % n.max(1)) as i64;
        }
        Ok(())
    })?;
    let values = with_element_type!(x.dtype(), T, {
        let src = contiguous_elements::<T>(&last)?;
        new_tensor::<T>(&out_shape, |o| {
            for (v, &flat) in o.iter_mut().zip(&order) {
                *v = src[flat];
            }
            Ok(())
        })?
    });
    Ok((
        values.permute(&back)?.contiguous()?,
        indices.permute(&back)?.contiguous()?,
    ))
}

/// Flat positions (row * n + i) of the k best entries of each row, best first.
fn select_rows(
    rows: usize,
    n: usize,
    k: usize,
    largest: bool,
    cmp: impl Fn(usize, usize) -> Ordering,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(rows * k);
    let mut idx: Vec<usize> = Vec::with_capacity(n);
    for r in 0..rows {
        idx.clear();
        idx.extend(r * n..(r + 1) * n);
        // Total order: by value (reversed for largest), then lower index first.
        let better = |a: &usize, b: &usize| {
            let by_value = if largest { cmp(*b, *a) } else { cmp(*a, *b) };
            by_value.then(a.cmp(b))
        };
        if k > 0 && k < n {
            idx.select_nth_unstable_by(k - 1, better);
        }
        let best = &mut idx[..k];
        best.sort_unstable_by(better);
        out.extend_from_slice(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_ties_nan_and_errors() {
        let x = Tensor::from_slice(&[1.0f32, 3.0, f32::NAN, 3.0, -1.0], &[5]).unwrap();
        let (v, i) = topk(&x, 3, -1, true).unwrap();
        let v = v.elements::<f32>().unwrap();
        assert!(v[0].is_nan() && v[1] == 3.0 && v[2] == 3.0);
        assert_eq!(i.elements::<i64>().unwrap(), vec![2, 1, 3]);
        let (v, i) = topk(&x, 2, 0, false).unwrap();
        assert_eq!(v.elements::<f32>().unwrap(), vec![-1.0, 1.0]);
        assert_eq!(i.elements::<i64>().unwrap(), vec![4, 0]);
        assert!(matches!(topk(&x, 6, 0, true), Err(Error::Shape { .. })));
    }
}
