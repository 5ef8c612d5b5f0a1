//! Shape, strides (in elements, possibly negative or zero) and offset: how a
//! tensor's elements sit in its storage. Every view (slice, permute, expand,
//! reshape) is a new `Layout` over the same storage, computed in O(ndim).

use crate::error::{Error, Result};
use crate::shape::{contiguous_strides, infer_reshape, numel};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<isize>,
    offset: usize,
}

/// One item of a Python/numpy style index: `t[1, 2:8:3, None, ...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexItem {
    Index(isize),
    Slice {
        start: Option<isize>,
        stop: Option<isize>,
        step: isize,
    },
    NewAxis,
    Ellipsis,
}

impl Layout {
    /// Row-major layout of `shape` starting at element 0.
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// A layout from raw parts; `check_bounds` validates it against a storage.
    pub fn new(shape: Vec<usize>, strides: Vec<isize>, offset: usize) -> Result<Layout> {
        if shape.len() != strides.len() {
            return Err(Error::shape(
                "layout",
                format!("shape {shape:?} and strides {strides:?} differ in rank"),
            ));
        }
        numel(&shape)?;
        Ok(Layout {
            shape,
            strides,
            offset,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[isize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        // Checked at construction.
        self.shape.iter().product()
    }

    /// True when the elements are in row-major order with no gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expected: isize = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d == 0 {
                return true;
            }
            if d != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d as isize);
        }
        true
    }

    /// The lowest and highest element offsets touched, or `None` for an empty tensor.
    pub fn span(&self) -> Option<(isize, isize)> {
        if self.shape.contains(&0) {
            return None;
        }
        let base = self.offset as isize;
        let (mut lo, mut hi) = (base, base);
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            let reach = (d as isize - 1).saturating_mul(s);
            if reach < 0 {
                lo = lo.saturating_add(reach);
            } else {
                hi = hi.saturating_add(reach);
            }
        }
        Some((lo, hi))
    }

    /// Checks that every element lies inside a storage of `storage_elems` elements.
    pub fn check_bounds(&self, storage_elems: usize) -> Result<()> {
        if let Some((lo, hi)) = self.span() {
            if lo < 0 || hi >= storage_elems as isize || hi == isize::MAX {
                return Err(Error::shape(
                    "layout",
                    format!(
                        "view shape {:?} strides {:?} offset {} reaches elements {lo}..={hi} outside a storage of {storage_elems} elements",
                        self.shape, self.strides, self.offset
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reorders dimensions: `dims` is a permutation of `0..ndim`.
    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let n = self.ndim();
        let mut seen = vec![false; n];
        if dims.len() != n
            || dims
                .iter()
                .any(|&d| d >= n || std::mem::replace(&mut seen[d], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{dims:?} is not a permutation of the {n} dimensions of {:?}",
                    self.shape
                ),
            ));
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    /// Reverses the dimensions (numpy's `.T`).
    pub fn reversed(&self) -> Layout {
        let mut out = self.clone();
        out.shape.reverse();
        out.strides.reverse();
        out
    }

    /// Broadcasts to `shape` (numpy rules): size-1 and new leading dims get stride 0.
    pub fn expand(&self, shape: &[usize]) -> Result<Layout> {
        let err = || {
            Error::shape(
                "expand",
                format!("cannot broadcast shape {:?} to {shape:?}", self.shape),
            )
        };
        if shape.len() < self.ndim() {
            return Err(err());
        }
        numel(shape)?;
        let lead = shape.len() - self.ndim();
        let mut strides = vec![0isize; shape.len()];
        for (i, &target) in shape.iter().enumerate().skip(lead) {
            let (d, s) = (self.shape[i - lead], self.strides[i - lead]);
            strides[i] = if d == target {
                s
            } else if d == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// Reshape as a view; `None` when the strides cannot express the new shape.
    pub fn reshape_view(&self, to: &[isize]) -> Result<Option<Layout>> {
        let new_shape = infer_reshape("reshape", &self.shape, to)?;
        if self.is_contiguous() {
            return Ok(Some(Layout {
                strides: contiguous_strides(&new_shape),
                shape: new_shape,
                offset: self.offset,
            }));
        }
        if new_shape.contains(&0) || self.numel() == 0 {
            // No element is ever addressed, so any strides will do.
            return Ok(Some(Layout {
                strides: contiguous_strides(&new_shape),
                shape: new_shape,
                offset: self.offset,
            }));
        }
        // Walk old and new dims together, grouping runs with equal products; a
        // group of old dims must be contiguous among itself to be re-split
        // (the idea of numpy's `_attempt_nocopy_reshape`).
        let (old_dims, old_strides): (Vec<usize>, Vec<isize>) = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .unzip();
        let mut new_strides = vec![0isize; new_shape.len()];
        let (mut oi, mut oj, mut ni, mut nj) = (0usize, 1usize, 0usize, 1usize);
        while ni < new_shape.len() && oi < old_dims.len() {
            let mut np_ = new_shape[ni];
            let mut op = old_dims[oi];
            while np_ != op {
                if np_ < op {
                    np_ *= new_shape[nj];
                    nj += 1;
                } else {
                    op *= old_dims[oj];
                    oj += 1;
                }
            }
            for k in oi..oj - 1 {
                if old_strides[k] != old_dims[k + 1] as isize * old_strides[k + 1] {
                    return Ok(None);
                }
            }
            new_strides[nj - 1] = old_strides[oj - 1];
            for k in (ni + 1..nj).rev() {
                new_strides[k - 1] = new_strides[k] * new_shape[k] as isize;
            }
            ni = nj;
            nj += 1;
            oi = oj;
            oj += 1;
        }
        // Trailing size-1 dims: any stride works; keep them consistent.
        let last = if ni >= 1 { new_strides[ni - 1] } else { 1 };
        for s in new_strides.iter_mut().skip(ni) {
            *s = last;
        }
        Ok(Some(Layout {
            shape: new_shape,
            strides: new_strides,
            offset: self.offset,
        }))
    }

    /// Applies a numpy-style index; integer items drop their dimension.
    pub fn index(&self, items: &[IndexItem]) -> Result<Layout> {
        let consuming = items
            .iter()
            .filter(|i| matches!(i, IndexItem::Index(_) | IndexItem::Slice { .. }))
            .count();
        let ellipses = items
            .iter()
            .filter(|i| matches!(i, IndexItem::Ellipsis))
            .count();
        if ellipses > 1 {
            return Err(Error::index(
                "index",
                "an index can only have a single ellipsis ('...')",
            ));
        }
        if consuming > self.ndim() {
            return Err(Error::index(
                "index",
                format!(
                    "too many indices: {consuming} for a tensor of {} dimensions (shape {:?})",
                    self.ndim(),
                    self.shape
                ),
            ));
        }
        let mut shape = Vec::new();
        let mut strides = Vec::new();
        let mut offset = self.offset as isize;
        let mut dim = 0usize;
        let mut expanded: Vec<&IndexItem> = Vec::new();
        for item in items {
            if matches!(item, IndexItem::Ellipsis) {
                for _ in 0..self.ndim() - consuming {
                    expanded.push(&IndexItem::Slice {
                        start: None,
                        stop: None,
                        step: 1,
                    });
                }
            } else {
                expanded.push(item);
            }
        }
        for item in expanded {
            match *item {
                IndexItem::NewAxis => {
                    shape.push(1);
                    strides.push(0);
                }
                IndexItem::Index(i) => {
                    let d = self.shape[dim] as isize;
                    let j = if i < 0 { i + d } else { i };
                    if j < 0 || j >= d {
                        return Err(Error::index(
                            "index",
                            format!("index {i} is out of bounds for dimension {dim} with size {d}"),
                        ));
                    }
                    offset += j * self.strides[dim];
                    dim += 1;
                }
                IndexItem::Slice { start, stop, step } => {
                    let (first, len) = slice_indices(start, stop, step, self.shape[dim])?;
                    if len > 0 {
                        offset += first * self.strides[dim];
                    }
                    shape.push(len);
                    strides.push(self.strides[dim] * step);
                    dim += 1;
                }
                IndexItem::Ellipsis => unreachable!("expanded above"),
            }
        }
        shape.extend_from_slice(&self.shape[dim..]);
        strides.extend_from_slice(&self.strides[dim..]);
        if offset < 0 {
            return Err(Error::Internal(format!(
                "index produced negative offset {offset}"
            )));
        }
        Ok(Layout {
            shape,
            strides,
            offset: offset as usize,
        })
    }
}

/// Python's `slice.indices` followed by the length: returns (first index, count).
pub fn slice_indices(
    start: Option<isize>,
    stop: Option<isize>,
    step: isize,
    len: usize,
) -> Result<(isize, usize)> {
    if step == 0 {
        return Err(Error::index("slice", "slice step cannot be zero"));
    }
    let len = len as isize;
    let clamp = |v: isize, lo: isize, hi: isize| v.max(lo).min(hi);
    let (lo, hi) = if step > 0 { (0, len) } else { (-1, len - 1) };
    let norm = |v: Option<isize>, default: isize| match v {
        None => default,
        Some(v) if v < 0 => clamp(v.saturating_add(len), lo, hi),
        Some(v) => clamp(v, lo, hi),
    };
    let (first, last) = if step > 0 {
        (norm(start, 0), norm(stop, len))
    } else {
        (norm(start, len - 1), norm(stop, -1))
    };
    let count = if step > 0 && last > first {
        (last - first - 1) / step + 1
    } else if step < 0 && first > last {
        (first - last - 1) / (-step) + 1
    } else {
        0
    };
    Ok((first, count as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sl(start: Option<isize>, stop: Option<isize>, step: isize) -> IndexItem {
        IndexItem::Slice { start, stop, step }
    }

    #[test]
    fn slice_indices_match_python() {
        // Values from CPython's slice(start, stop, step).indices(len) and len(range(...)).
        assert_eq!(slice_indices(None, None, 1, 5).unwrap(), (0, 5));
        assert_eq!(slice_indices(None, None, -1, 5).unwrap(), (4, 5));
        assert_eq!(slice_indices(Some(-2), None, 1, 5).unwrap(), (3, 2));
        assert_eq!(slice_indices(Some(10), Some(-10), -3, 5).unwrap(), (4, 2));
        assert_eq!(slice_indices(Some(1), Some(1), 1, 5).unwrap(), (1, 0));
        assert_eq!(slice_indices(None, None, 2, 0).unwrap(), (0, 0));
        assert!(slice_indices(None, None, 0, 3).is_err());
    }

    #[test]
    fn index_and_bounds() {
        let l = Layout::contiguous(&[4, 5, 6]);
        let v = l
            .index(&[IndexItem::Index(-1), sl(None, None, -2), IndexItem::NewAxis])
            .unwrap();
        assert_eq!(v.shape(), &[3, 1, 6]);
        assert_eq!(v.strides(), &[-12, 0, 1]);
        assert_eq!(v.offset(), 3 * 30 + 4 * 6);
        v.check_bounds(120).unwrap();
        assert!(l.index(&[IndexItem::Index(4)]).is_err());
        let e = l
            .index(&[IndexItem::Ellipsis, IndexItem::Index(0)])
            .unwrap();
        assert_eq!(e.shape(), &[4, 5]);
    }

    #[test]
    fn reshape_views() {
        let l = Layout::contiguous(&[2, 3, 4]);
        let t = l.permute(&[1, 0, 2]).unwrap();
        // (3,2,4) permuted: merging the last two dims is impossible, but splitting the last is fine.
        assert!(t.reshape_view(&[3, 8]).unwrap().is_none());
        let split = t.reshape_view(&[3, 2, 2, 2]).unwrap().unwrap();
        assert_eq!(split.strides(), &[4, 12, 2, 1]);
        let merged = l.index(&[sl(None, None, 1), sl(None, None, 2)]).unwrap();
        // (2, 2, 4) with strides (12, 8, 1): last two dims are not mergeable.
        assert!(merged.reshape_view(&[2, 8]).unwrap().is_none());
        assert!(merged.reshape_view(&[4, 4]).unwrap().is_none());
        let ok = merged.reshape_view(&[2, 2, 2, 2]).unwrap().unwrap();
        assert_eq!(ok.strides(), &[12, 8, 2, 1]);
    }

    #[test]
    fn expand_broadcasts() {
        let l = Layout::contiguous(&[3, 1]);
        let e = l.expand(&[2, 3, 4]).unwrap();
        assert_eq!(e.strides(), &[0, 1, 0]);
        assert!(l.expand(&[3, 2, 2]).is_err());
        assert!(!e.is_contiguous());
    }
}
