//! Broadcasting binary arithmetic: add, sub, mul, div, maximum, minimum, pow.
//!
//! Both operands must have the same dtype (no implicit promotion). f32 runs the
//! SIMD kernels directly; f64, f16 and bf16 compute in f64 and round back; the
//! integer dtypes (add, sub, mul, maximum, minimum only) compute in i64 and wrap
//! back, which is numpy's wrapping arithmetic. Max/min propagate NaN.

use crate::cast::Element;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::rowwise::{self, Binary, BinaryScalar, Operand};
use crate::kernels::{isa, Isa};
use crate::layout::Layout;
use crate::shape::broadcast_shapes;
use crate::tensor::Tensor;

use super::data::{as_dtype, coalesce, compute_dtype, new_tensor, storage_elements};

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Add, a, b)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Sub, a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Mul, a, b)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Div, a, b)
}
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Max, a, b)
}
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Min, a, b)
}
pub fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(Binary::Pow, a, b)
}

/// `op(a, b)` with numpy broadcasting; the result is contiguous.
pub fn binary(op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(
            name,
            format!(
                "operands have different dtypes {} and {} (rtserve does not promote; cast one with astype)",
                a.dtype(),
                b.dtype()
            ),
        ));
    }
    let dtype = a.dtype();
    if dtype == DType::Bool || (!dtype.is_float() && !op.takes_integers()) {
        return Err(Error::dtype(
            name,
            format!("{name} is not defined for {dtype} tensors"),
        ));
    }
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let compute = compute_dtype(dtype);
    let ca = as_dtype(a, compute)?;
    let cb = as_dtype(b, compute)?;
    let la = ca.layout().expand(&shape)?;
    let lb = cb.layout().expand(&shape)?;
    let isa = isa();
    let out = match compute {
        DType::F32 => run::<f32>(isa, op, &ca, &la, &cb, &lb, &shape)?,
        DType::F64 => run::<f64>(isa, op, &ca, &la, &cb, &lb, &shape)?,
        _ => run::<i64>(isa, op, &ca, &la, &cb, &lb, &shape)?,
    };
    as_dtype(&out, dtype)
}

/// `op(a, b)` written over a's elements when a is f32, contiguous, the only
/// handle on its storage, and already of the broadcast shape (b broadcasts to
/// it); otherwise a comes back untouched as `Err` (the executor then runs
/// [`binary`]).
pub fn binary_in_place(
    op: Binary,
    mut a: Tensor,
    b: &Tensor,
) -> std::result::Result<Tensor, Tensor> {
    if a.dtype() != DType::F32
        || b.dtype() != DType::F32
        || broadcast_shapes(op.name(), a.shape(), b.shape())
            .ok()
            .as_deref()
            != Some(a.shape())
    {
        return Err(a);
    }
    let shape = a.shape().to_vec();
    let (Ok(lb), Ok(db)) = (b.layout().expand(&shape), storage_elements::<f32>(b)) else {
        return Err(a);
    };
    let la = Layout::contiguous(&shape);
    let isa = isa();
    let Some(out) = a.unique_elements_mut::<f32>() else {
        return Err(a);
    };
    let dims = coalesce(&shape, [&la, &lb]);
    let (n, [_, sb]) = *dims.last().unwrap_or(&(1, [0, 0]));
    let outer = &dims[..dims.len() - 1];
    let b_row_offset = |mut r: usize| -> isize {
        let mut ob = lb.offset() as isize;
        for &(d, [_, xb]) in outer.iter().rev() {
            ob += (r % d) as isize * xb;
            r /= d;
        }
        ob
    };
    let total = out.len();
    if total == 0 {
        return Ok(a);
    }
    let per_task = rowwise::units_per_task(total, 1);
    rowwise::for_each_chunk(out, 1, per_task, |start, chunk| {
        let mut tmp_b = Vec::new();
        let mut tmp_a = [0f32; super::unary::IN_PLACE_TILE];
        let end = start + chunk.len();
        let mut p = start;
        while p < end {
            let (row, col) = (p / n, p % n);
            let len = (n - col).min(end - p).min(tmp_a.len());
            let ob = operand(
                db,
                b_row_offset(row) + col as isize * sb,
                sb,
                len,
                &mut tmp_b,
            );
            let dst = &mut chunk[p - start..p - start + len];
            let src = &mut tmp_a[..len];
            src.copy_from_slice(dst);
            rowwise::binary(isa, op, Operand::Slice(src), ob, dst);
            p += len;
        }
    });
    Ok(a)
}

fn run<T: BinaryScalar + Element>(
    isa: Isa,
    op: Binary,
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    let da = storage_elements::<T>(a)?;
    let db = storage_elements::<T>(b)?;
    let dims = coalesce(shape, [la, lb]);
    let (n, [sa, sb]) = *dims.last().unwrap_or(&(1, [0, 0]));
    let outer = &dims[..dims.len() - 1];
    // Storage offsets of the first element of output row `r`.
    let row_offsets = |mut r: usize| -> (isize, isize) {
        let (mut oa, mut ob) = (la.offset() as isize, lb.offset() as isize);
        for &(d, [xa, xb]) in outer.iter().rev() {
            let i = (r % d) as isize;
            r /= d;
            oa += i * xa;
            ob += i * xb;
        }
        (oa, ob)
    };
    let total: usize = shape.iter().product();
    new_tensor::<T>(shape, |out| {
        if total == 0 {
            return Ok(());
        }
        let per_task = rowwise::units_per_task(total, 1);
        rowwise::for_each_chunk(out, 1, per_task, |start, chunk| {
            let (mut tmp_a, mut tmp_b) = (Vec::new(), Vec::new());
            let end = start + chunk.len();
            let mut p = start;
            while p < end {
                let (row, col) = (p / n, p % n);
                let len = (n - col).min(end - p);
                let (ra, rb) = row_offsets(row);
                let oa = operand(da, ra + col as isize * sa, sa, len, &mut tmp_a);
                let ob = operand(db, rb + col as isize * sb, sb, len, &mut tmp_b);
                rowwise::binary(isa, op, oa, ob, &mut chunk[p - start..p - start + len]);
                p += len;
            }
        });
        Ok(())
    })
}

/// One run of `len` elements from `data` at `start` with `stride`: borrowed when
/// contiguous, a scalar when broadcast, else gathered into `tmp`.
fn operand<'a, T: Copy>(
    data: &'a [T],
    start: isize,
    stride: isize,
    len: usize,
    tmp: &'a mut Vec<T>,
) -> Operand<'a, T> {
    let s = start as usize;
    match stride {
        0 => Operand::Scalar(data[s]),
        1 => Operand::Slice(&data[s..s + len]),
        _ => {
            tmp.clear();
            tmp.extend((0..len as isize).map(|i| data[(start + i * stride) as usize]));
            Operand::Slice(tmp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::IndexItem;

    #[test]
    fn broadcasting_strides_and_errors() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let b = Tensor::from_slice(&[10.0f32, 20.0], &[2, 1]).unwrap();
        let r = add(&a, &b).unwrap();
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(
            r.elements::<f32>().unwrap(),
            vec![11.0, 12.0, 13.0, 24.0, 25.0, 26.0]
        );
        let rev = a
            .index(&[
                IndexItem::Slice {
                    start: None,
                    stop: None,
                    step: 1,
                },
                IndexItem::Slice {
                    start: None,
                    stop: None,
                    step: -2,
                },
            ])
            .unwrap();
        let r = sub(&rev, &a.t().index(&[IndexItem::Index(0)]).unwrap()).unwrap();
        assert_eq!(r.elements::<f32>().unwrap(), vec![2.0, -3.0, 5.0, 0.0]);
        let e = add(&a, &Tensor::from_slice(&[1.0f32; 4], &[4]).unwrap()).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("[2, 3]"));
        let i = Tensor::from_slice(&[1i32, 2], &[2]).unwrap();
        assert!(matches!(add(&a, &i).unwrap_err(), Error::DType { .. }));
        assert!(matches!(div(&i, &i).unwrap_err(), Error::DType { .. }));
        let w = Tensor::from_slice(&[i8::MAX, 3], &[2]).unwrap();
        assert_eq!(add(&w, &w).unwrap().elements::<i8>().unwrap(), vec![-2, 6]);
    }
}
