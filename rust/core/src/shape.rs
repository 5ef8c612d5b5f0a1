//! Shape arithmetic that cannot overflow silently.

use crate::error::{Error, Result};

/// Number of elements, or an error when the product overflows `usize`.
pub fn numel(shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| Error::shape("shape", format!("element count of {shape:?} overflows")))
    })
}

/// Row-major (C order) strides in elements.
pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc: isize = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d.max(1) as isize);
    }
    strides
}

/// Strides (in elements) that read a contiguous tensor of `shape` broadcast to `out`
/// (numpy rules, right-aligned): new leading and size-1 dims get stride 0. `shape` must
/// broadcast to `out` (checked where the graph was built).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<isize> {
    let own = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|d| {
            if d < lead || shape[d - lead] == 1 {
                0
            } else {
                own[d - lead]
            }
        })
        .collect()
}

/// Resolves one `-1` in a requested shape against `numel` elements.
pub fn infer_reshape(op: &str, from: &[usize], to: &[isize]) -> Result<Vec<usize>> {
    let total = numel(from)?;
    let mut inferred = None;
    let mut known = 1usize;
    for (i, &d) in to.iter().enumerate() {
        if d == -1 {
            if inferred.replace(i).is_some() {
                return Err(Error::shape(
                    op,
                    format!("only one dimension may be -1, got {to:?}"),
                ));
            }
        } else if d < 0 {
            return Err(Error::shape(
                op,
                format!("negative dimension {d} in {to:?}"),
            ));
        } else {
            known = known
                .checked_mul(d as usize)
                .ok_or_else(|| Error::shape(op, format!("element count of {to:?} overflows")))?;
        }
    }
    let mut out: Vec<usize> = to.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = inferred {
        if known == 0 || total % known != 0 {
            return Err(Error::shape(
                op,
                format!("cannot reshape {from:?} ({total} elements) to {to:?}"),
            ));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::shape(
            op,
            format!("cannot reshape {from:?} ({total} elements) to {to:?} ({known} elements)"),
        ));
    }
    Ok(out)
}

/// `shape` split around `axis`: (product of the dims before it, the dim, product of those after).
pub fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// `axis` (negative counts from the end) as an index into `ndim` dimensions.
pub fn normalize_axis(op: &str, axis: isize, ndim: usize) -> Result<usize> {
    let n = ndim as isize;
    let a = if axis < 0 { axis + n } else { axis };
    if a < 0 || a >= n {
        return Err(Error::shape(
            op,
            format!("axis {axis} is out of range for a tensor of {ndim} dimensions"),
        ));
    }
    Ok(a as usize)
}

/// The numpy broadcast of two shapes, or an error naming `op` and both shapes.
pub fn broadcast_shapes(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0usize; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(
                op,
                format!("shapes {a:?} and {b:?} cannot be broadcast together"),
            ));
        };
    }
    numel(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_numel() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<isize>::new());
        assert_eq!(numel(&[]).unwrap(), 1);
        assert_eq!(numel(&[3, 0]).unwrap(), 0);
        assert!(numel(&[usize::MAX, 2]).is_err());
    }

    #[test]
    fn axes_and_broadcasting() {
        assert_eq!(normalize_axis("op", -1, 3).unwrap(), 2);
        assert!(normalize_axis("op", 3, 3).is_err());
        assert!(normalize_axis("op", 0, 0).is_err());
        assert_eq!(
            broadcast_shapes("op", &[4, 1, 3], &[5, 1]).unwrap(),
            vec![4, 5, 3]
        );
        assert_eq!(broadcast_shapes("op", &[], &[2, 0]).unwrap(), vec![2, 0]);
        let e = broadcast_shapes("add", &[2, 3], &[4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add") && e.contains("[2, 3]") && e.contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn reshape_inference() {
        assert_eq!(infer_reshape("r", &[2, 6], &[-1, 3]).unwrap(), vec![4, 3]);
        assert!(infer_reshape("r", &[2, 6], &[5, -1]).is_err());
        assert!(infer_reshape("r", &[2, 6], &[-1, -1]).is_err());
        assert!(infer_reshape("r", &[2, 6], &[7]).is_err());
        assert_eq!(
            infer_reshape("r", &[0, 6], &[0, 3, 2]).unwrap(),
            vec![0, 3, 2]
        );
    }
}
