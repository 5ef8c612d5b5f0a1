//! Elementwise selection: `where(cond, a, b)` and `masked_fill(x, mask, value)`,
//! with numpy broadcasting, any dtype for the values.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::broadcast_shapes;
use crate::tensor::Tensor;
use crate::with_element_type;

use super::data::{coalesce, for_each_offsets, new_tensor, storage_elements};

/// `cond ? a : b` elementwise; cond is bool, a and b share a dtype.
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    select("where", cond, a, b)
}

/// `x` with `value` wherever `mask` is true; mask must broadcast to x's shape.
pub fn masked_fill(x: &Tensor, mask: &Tensor, value: f64) -> Result<Tensor> {
    const OP: &str = "masked_fill";
    let shape = broadcast_shapes(OP, x.shape(), mask.shape())?;
    if shape != x.shape() {
        return Err(Error::shape(
            OP,
            format!(
                "mask of shape {:?} does not broadcast to x's shape {:?}",
                mask.shape(),
                x.shape()
            ),
        ));
    }
    let fill = Tensor::from_slice(&[value], &[])?.cast(x.dtype())?;
    select(OP, mask, &fill, x)
}

fn select(op: &str, cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cond.dtype() != DType::Bool {
        return Err(Error::dtype(
            op,
            format!("the condition/mask must be bool, got {}", cond.dtype()),
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(
            op,
            format!(
                "values have different dtypes {} and {} (cast one with astype)",
                a.dtype(),
                b.dtype()
            ),
        ));
    }
    let shape = broadcast_shapes(op, a.shape(), b.shape())
        .and_then(|s| broadcast_shapes(op, &s, cond.shape()))
        .map_err(|_| {
            Error::shape(
                op,
                format!(
                    "shapes {:?}, {:?} and {:?} cannot be broadcast together",
                    cond.shape(),
                    a.shape(),
                    b.shape()
                ),
            )
        })?;
    let (lc, la, lb) = (
        cond.layout().expand(&shape)?,
        a.layout().expand(&shape)?,
        b.layout().expand(&shape)?,
    );
    let c = storage_elements::<crate::cast::Bool8>(cond)?;
    with_element_type!(a.dtype(), T, {
        let (da, db) = (storage_elements::<T>(a)?, storage_elements::<T>(b)?);
        new_tensor::<T>(&shape, |out| {
            // Row by row over the dims merged where all three are contiguous (a decoder's
            // cache update, [b, ctx, 1, 1] ? [b, 1, h, d] : [b, ctx, h, d], copies rows of
            // h*d): a condition constant along the row copies or fills it from one side.
            if out.is_empty() {
                return Ok(());
            }
            let dims = coalesce(&shape, [&lc, &la, &lb]);
            let (n, [sc, sa, sb]) = dims[dims.len() - 1];
            let outer = &dims[..dims.len() - 1];
            let outer_layout = |k: usize, l: &Layout| {
                Layout::new(
                    outer.iter().map(|d| d.0).collect(),
                    outer.iter().map(|d| d.1[k]).collect(),
                    l.offset(),
                )
            };
            let (oc_l, oa_l, ob_l) = (
                outer_layout(0, &lc)?,
                outer_layout(1, &la)?,
                outer_layout(2, &lb)?,
            );
            let mut rows = out.chunks_exact_mut(n);
            for_each_offsets([&oc_l, &oa_l, &ob_l], |[oc, oa, ob]| {
                let Some(row) = rows.next() else { return };
                if sc == 0 {
                    let (d, o, st) = if c[oc].0 != 0 {
                        (da, oa, sa)
                    } else {
                        (db, ob, sb)
                    };
                    match st {
                        1 => row.copy_from_slice(&d[o..o + n]),
                        0 => row.fill(d[o]),
                        _ => {
                            for (j, v) in row.iter_mut().enumerate() {
                                *v = d[(o as isize + j as isize * st) as usize];
                            }
                        }
                    }
                } else {
                    for (j, v) in row.iter_mut().enumerate() {
                        let j = j as isize;
                        *v = if c[(oc as isize + j * sc) as usize].0 != 0 {
                            da[(oa as isize + j * sa) as usize]
                        } else {
                            db[(ob as isize + j * sb) as usize]
                        };
                    }
                }
            });
            Ok(())
        })
    })
}
