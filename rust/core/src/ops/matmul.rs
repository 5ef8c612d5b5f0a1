//! Matrix products on tensors: `matmul` with numpy semantics (batched,
//! broadcasting batch dims, 1-D operands), and `linear` (HF `nn.Linear`:
//! `x · Wᵀ + b`, W in f32/bf16/f16 or pre-packed, with a fused epilogue).

use std::sync::Arc;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::epilogue::{Activation, Epilogue};
use crate::kernels::frame::gemm::{gemm, pack_b_for_reuse, BSource, PackedB};
use crate::kernels::frame::pack::MatRef;
use crate::storage::OutBuffer;
use crate::tensor::Tensor;

fn mat_f32(t: &Tensor, batch_offset: isize) -> MatRef<f32> {
    let nd = t.ndim();
    MatRef {
        ptr: (t.data_ptr() as *const f32).wrapping_offset(batch_offset),
        rows: t.shape()[nd - 2],
        cols: t.shape()[nd - 1],
        rs: t.strides()[nd - 2],
        cs: t.strides()[nd - 1],
    }
}

/// B operand of a tensor (2-D view at `batch_offset` elements), transposed when `t`.
fn b_source(
    op: &str,
    t: &Tensor,
    batch_offset: isize,
    transposed: bool,
) -> Result<BSource<'static>> {
    let nd = t.ndim();
    let (mut rows, mut cols) = (t.shape()[nd - 2], t.shape()[nd - 1]);
    let (mut rs, mut cs) = (t.strides()[nd - 2], t.strides()[nd - 1]);
    if transposed {
        std::mem::swap(&mut rows, &mut cols);
        std::mem::swap(&mut rs, &mut cs);
    }
    macro_rules! view {
        ($ty:ty) => {
            MatRef {
                ptr: (t.data_ptr() as *const $ty).wrapping_offset(batch_offset),
                rows,
                cols,
                rs,
                cs,
            }
        };
    }
    Ok(match t.dtype() {
        DType::F32 => BSource::F32(view!(f32)),
        DType::BF16 => BSource::BF16(view!(bf16)),
        DType::F16 => BSource::F16(view!(f16)),
        d => {
            return Err(Error::dtype(
                op,
                format!("weights of dtype {d} are not supported (f32, bf16 or f16)"),
            ))
        }
    })
}

fn check_a(op: &str, a: &Tensor) -> Result<()> {
    if a.dtype() != DType::F32 {
        return Err(Error::dtype(
            op,
            format!(
                "activations must be f32, got {} (cast with astype('f32'))",
                a.dtype()
            ),
        ));
    }
    Ok(())
}

/// `a @ b` with numpy semantics. `a` is f32; `b` f32, bf16 or f16. Result f32.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_a("matmul", a)?;
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(Error::shape(
            "matmul",
            "operands must have at least one dimension (use mul for scalars)",
        ));
    }
    let a2 = if a.ndim() == 1 {
        a.index(&[crate::IndexItem::NewAxis, crate::IndexItem::Ellipsis])?
    } else {
        a.clone()
    };
    let b2 = if b.ndim() == 1 {
        b.index(&[crate::IndexItem::Ellipsis, crate::IndexItem::NewAxis])?
    } else {
        b.clone()
    };
    let (m, k) = (a2.shape()[a2.ndim() - 2], a2.shape()[a2.ndim() - 1]);
    let (kb, n) = (b2.shape()[b2.ndim() - 2], b2.shape()[b2.ndim() - 1]);
    if k != kb {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner dimensions differ: {:?} @ {:?} ({k} != {kb})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let batch = crate::shape::broadcast_shapes(
        "matmul",
        &a2.shape()[..a2.ndim() - 2],
        &b2.shape()[..b2.ndim() - 2],
    )?;
    let mut full_a = batch.clone();
    full_a.extend([m, k]);
    let mut full_b = batch.clone();
    full_b.extend([k, n]);
    let a3 = a2.expand(&full_a)?;
    let b3 = b2.expand(&full_b)?;
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let nbatch: usize = batch.iter().product();
    let mut out = f32_buffer("matmul", nbatch * m * n)?;
    let out_f32 = out.as_mut_f32();
    for bi in 0..nbatch {
        // Element offsets of this batch entry in a and b.
        let (mut oa, mut ob, mut rem) = (0isize, 0isize, bi);
        for d in (0..batch.len()).rev() {
            let idx = (rem % batch[d]) as isize;
            rem /= batch[d];
            oa += idx * a3.strides()[d];
            ob += idx * b3.strides()[d];
        }
        let c = &mut out_f32[bi * m * n..(bi + 1) * m * n];
        gemm(
            mat_f32(&a3, oa),
            b_source("matmul", &b3, ob, false)?,
            c,
            n,
            &Epilogue::default(),
        )?;
    }
    let out = Tensor::from_storage(Arc::new(out.into_storage()), DType::F32, &out_shape)?;
    let mut final_shape = out_shape;
    if b.ndim() == 1 {
        final_shape.pop();
    }
    if a.ndim() == 1 {
        let l = final_shape.len();
        final_shape.remove(l - if b.ndim() == 1 { 1 } else { 2 });
    }
    out.reshape(&final_shape.iter().map(|&d| d as isize).collect::<Vec<_>>())
}

/// Weights packed once for repeated `linear` calls.
#[derive(Clone)]
pub struct PackedWeight {
    pub packed: Arc<PackedB>,
    pub out_features: usize,
    pub in_features: usize,
    pub dtype: DType,
}

/// Packs `w` ([out_features, in_features], f32/bf16/f16) for `linear`.
pub fn prepack(w: &Tensor) -> Result<PackedWeight> {
    if w.ndim() != 2 {
        return Err(Error::shape(
            "prepack",
            format!("weight must be 2-D [out, in], got {:?}", w.shape()),
        ));
    }
    let packed = pack_b_for_reuse(b_source("prepack", w, 0, true)?)?;
    Ok(PackedWeight {
        out_features: w.shape()[0],
        in_features: w.shape()[1],
        dtype: w.dtype(),
        packed: Arc::new(packed),
    })
}

/// A weight for `linear`: a tensor ([out, in]) or a pre-packed one.
pub enum Weight<'a> {
    Tensor(&'a Tensor),
    Packed(&'a PackedWeight),
}

/// `act(x · Wᵀ + bias) + residual`, x [..., in] f32, W [out, in], output [..., out] f32.
pub fn linear(
    x: &Tensor,
    w: Weight<'_>,
    bias: Option<&Tensor>,
    activation: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    check_a("linear", x)?;
    if x.ndim() == 0 {
        return Err(Error::shape(
            "linear",
            "input must have at least one dimension",
        ));
    }
    let (n, k) = match &w {
        Weight::Tensor(t) => {
            if t.ndim() != 2 {
                return Err(Error::shape(
                    "linear",
                    format!("weight must be 2-D [out, in], got {:?}", t.shape()),
                ));
            }
            (t.shape()[0], t.shape()[1])
        }
        Weight::Packed(p) => (p.out_features, p.in_features),
    };
    let kx = *x.shape().last().unwrap_or(&0);
    if kx != k {
        return Err(Error::shape(
            "linear",
            format!(
                "input {:?} has {kx} features but the weight expects {k}",
                x.shape()
            ),
        ));
    }
    let m: usize = x.shape()[..x.ndim() - 1].iter().product();
    let x2 = x.reshape(&[m as isize, k as isize])?;
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap_or(&mut 0) = n;
    let bias_c;
    let bias_slice = match bias {
        Some(b) => {
            if b.shape() != [n] || b.dtype() != DType::F32 {
                return Err(Error::shape(
                    "linear",
                    format!("bias must be f32 [{n}], got {} {:?}", b.dtype(), b.shape()),
                ));
            }
            bias_c = b.contiguous()?;
            Some(bias_c.elements::<f32>()?)
        }
        None => None,
    };
    let res2 = match residual {
        Some(r) => {
            if r.shape() != out_shape.as_slice() || r.dtype() != DType::F32 {
                return Err(Error::shape(
                    "linear",
                    format!(
                        "residual must be f32 {out_shape:?}, got {} {:?}",
                        r.dtype(),
                        r.shape()
                    ),
                ));
            }
            Some(r.reshape(&[m as isize, n as isize])?)
        }
        None => None,
    };
    let epi = Epilogue {
        bias: bias_slice.as_deref(),
        activation: Some(activation),
        residual: res2.as_ref().map(|r| mat_f32(r, 0)),
    };
    let mut out = f32_buffer("linear", m * n)?;
    let b = match &w {
        Weight::Tensor(t) => b_source("linear", t, 0, true)?,
        Weight::Packed(p) => BSource::Packed(&p.packed),
    };
    gemm(mat_f32(&x2, 0), b, out.as_mut_f32(), n, &epi)?;
    Tensor::from_storage(Arc::new(out.into_storage()), DType::F32, &out_shape)
}

fn f32_buffer(op: &str, elems: usize) -> Result<OutBuffer> {
    let bytes = elems
        .checked_mul(4)
        .ok_or_else(|| Error::shape(op, format!("output of {elems} elements is too large")))?;
    // Every element is written by the GEMM, so stale contents are fine.
    OutBuffer::new(bytes, false)
}
