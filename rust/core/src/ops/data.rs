//! Typed access to a tensor's elements and construction of op outputs, shared
//! by the op families.

use std::borrow::Cow;
use std::sync::Arc;

use crate::cast::Element;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::numel;
use crate::storage::OutBuffer;
use crate::tensor::Tensor;

/// The whole storage of `t` as elements of type `T` (index it with the layout's offsets).
pub fn storage_elements<T: Element>(t: &Tensor) -> Result<&[T]> {
    if T::DTYPE != t.dtype() {
        return Err(Error::Internal(format!(
            "storage_elements: tensor holds {}, asked for {}",
            t.dtype(),
            T::DTYPE
        )));
    }
    let bytes = t.storage().as_bytes();
    let n = bytes.len() / std::mem::size_of::<T>();
    // SAFETY: `Tensor::from_parts` checked that the storage is aligned for the dtype,
    // `n` elements fit in `bytes`, and every bit pattern is a valid element type
    // (ints, IEEE floats, Bool8 over u8). The storage outlives the borrow of `t`.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) })
}

/// The elements of `t` in row-major order, borrowed when `t` is contiguous.
pub fn contiguous_elements<T: Element>(t: &Tensor) -> Result<Cow<'_, [T]>> {
    if t.is_contiguous() {
        let all = storage_elements::<T>(t)?;
        Ok(Cow::Borrowed(&all[t.offset()..t.offset() + t.numel()]))
    } else {
        Ok(Cow::Owned(t.elements::<T>()?))
    }
}

/// A new contiguous tensor of `shape`, its elements written by `fill`.
pub fn new_tensor<T: Element>(
    shape: &[usize],
    fill: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<Tensor> {
    let n = numel(shape)?;
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::shape("tensor", format!("byte size of {shape:?} overflows")))?;
    // Zeroed when freshly allocated; an arena region offered by the executor
    // keeps stale bytes (every `fill` writes all elements).
    let mut buf = OutBuffer::new(bytes, false)?;
    if let OutBuffer::Owned(b) = &mut buf {
        b.as_mut_slice().fill(0);
    }
    {
        let raw = buf.as_mut_slice();
        // SAFETY: the buffer is 64-byte aligned (enough for every element type), holds
        // exactly n elements, is initialised (zeros or an earlier value's bytes; every
        // bit pattern is a valid element) and is borrowed mutably and exclusively here.
        let elems = unsafe { std::slice::from_raw_parts_mut(raw.as_mut_ptr().cast::<T>(), n) };
        fill(elems)?;
    }
    Tensor::from_storage(Arc::new(buf.into_storage()), T::DTYPE, shape)
}

/// The dtype an elementwise op computes in: f32 natively, the other floats in
/// f64, every integer type (and bool) in i64.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F32 => DType::F32,
        d if d.is_float() => DType::F64,
        _ => DType::I64,
    }
}

/// `t` converted to `dtype` (itself, uncopied, when it already has it).
pub fn as_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.cast(dtype)
    }
}

/// Calls `f` with the storage offsets of element `i` in each of `layouts`
/// (all of the same shape), for every element in row-major order.
pub fn for_each_offsets<const N: usize>(layouts: [&Layout; N], mut f: impl FnMut([usize; N])) {
    let shape = layouts[0].shape();
    if shape.contains(&0) {
        return;
    }
    let nd = shape.len();
    let mut idx = vec![0usize; nd];
    let mut off: [isize; N] = std::array::from_fn(|k| layouts[k].offset() as isize);
    loop {
        f(off.map(|o| o as usize));
        let mut d = nd;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for (k, o) in off.iter_mut().enumerate() {
                *o += layouts[k].strides()[d];
            }
            if idx[d] < shape[d] {
                break;
            }
            for (k, o) in off.iter_mut().enumerate() {
                *o -= layouts[k].strides()[d] * shape[d] as isize;
            }
            idx[d] = 0;
        }
    }
}

/// Dimensions of a broadcast iteration over `N` operands after dropping size-1 dims and
/// merging runs contiguous in every operand: (size, stride in each operand). Never empty.
pub fn coalesce<const N: usize>(
    shape: &[usize],
    layouts: [&Layout; N],
) -> Vec<(usize, [isize; N])> {
    let mut dims: Vec<(usize, [isize; N])> = Vec::new();
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let strides: [isize; N] = std::array::from_fn(|k| layouts[k].strides()[i]);
        if let Some(last) = dims.last_mut() {
            let n = d as isize;
            if (0..N).all(|k| last.1[k] == strides[k] * n) {
                *last = (last.0 * d, strides);
                continue;
            }
        }
        dims.push((d, strides));
    }
    if dims.is_empty() {
        dims.push((1, [0; N]));
    }
    dims
}

/// Moves `axis` to the end: a view, plus the permutation that moves it back.
pub fn axis_to_last(t: &Tensor, axis: usize) -> Result<(Tensor, Vec<usize>)> {
    let nd = t.ndim();
    let mut perm: Vec<usize> = (0..nd).filter(|&d| d != axis).collect();
    perm.push(axis);
    let mut back = vec![0usize; nd];
    for (i, &p) in perm.iter().enumerate() {
        back[p] = i;
    }
    Ok((t.permute(&perm)?, back))
}
