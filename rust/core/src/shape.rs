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
