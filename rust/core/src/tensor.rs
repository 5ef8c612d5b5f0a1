//! `Tensor`: a dtype and a [`Layout`] over shared [`Storage`]. Views share the
//! storage and cost O(ndim); `contiguous`, `cast` and `reshape` (when the
//! strides cannot express the new shape) copy.

use std::sync::Arc;

use crate::cast::{convert, Element};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{IndexItem, Layout};
use crate::shape::numel;
use crate::storage::{AlignedBuffer, OutBuffer, Storage};
use crate::with_element_type;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
    dtype: DType,
}

impl Tensor {
    /// A view of `storage`; checks alignment and that every element is inside it.
    pub fn from_parts(storage: Arc<Storage>, dtype: DType, layout: Layout) -> Result<Tensor> {
        let size = dtype.size();
        if !(storage.as_ptr() as usize).is_multiple_of(size) {
            return Err(Error::Internal(format!(
                "storage at {:p} is not aligned for {dtype}",
                storage.as_ptr()
            )));
        }
        layout.check_bounds(storage.len() / size)?;
        Ok(Tensor {
            storage,
            layout,
            dtype,
        })
    }

    /// A contiguous tensor over a whole storage, which must hold exactly `shape`.
    pub fn from_storage(storage: Arc<Storage>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let bytes = numel(shape)?
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::shape("tensor", format!("byte size of {shape:?} overflows")))?;
        if bytes != storage.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "{dtype} tensor of shape {shape:?} needs {bytes} bytes, storage has {}",
                    storage.len()
                ),
            ));
        }
        Tensor::from_parts(storage, dtype, Layout::contiguous(shape))
    }

    /// A contiguous tensor holding a copy of `bytes` (row-major).
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let storage = Arc::new(Storage::owned(AlignedBuffer::from_bytes(bytes)?));
        Tensor::from_storage(storage, dtype, shape)
    }

    /// A contiguous tensor holding a copy of `data`.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        let mut buf = AlignedBuffer::zeroed(std::mem::size_of_val(data))?;
        write_elements(buf.as_mut_slice(), data.iter().copied());
        Tensor::from_storage(Arc::new(Storage::owned(buf)), T::DTYPE, shape)
    }

    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let bytes = numel(shape)?
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::shape("zeros", format!("byte size of {shape:?} overflows")))?;
        Tensor::from_storage(
            Arc::new(Storage::owned(AlignedBuffer::zeroed(bytes)?)),
            dtype,
            shape,
        )
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn strides(&self) -> &[isize] {
        self.layout.strides()
    }
    pub fn offset(&self) -> usize {
        self.layout.offset()
    }
    pub fn ndim(&self) -> usize {
        self.layout.ndim()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    /// Bytes of the elements this view addresses (not of the whole storage).
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Address of the first element (of element 0 even when strides are negative).
    pub fn data_ptr(&self) -> *const u8 {
        self.storage
            .as_ptr()
            .wrapping_add(self.layout.offset() * self.dtype.size())
    }

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            layout,
            dtype: self.dtype,
        }
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute(dims)?))
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let n = self.ndim();
        if a >= n || b >= n {
            return Err(Error::shape(
                "transpose",
                format!(
                    "dimensions ({a}, {b}) out of range for shape {:?}",
                    self.shape()
                ),
            ));
        }
        let mut dims: Vec<usize> = (0..n).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// All dimensions reversed (numpy's `.T`).
    pub fn t(&self) -> Tensor {
        self.with_layout(self.layout.reversed())
    }

    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.expand(shape)?))
    }

    pub fn index(&self, items: &[IndexItem]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.index(items)?))
    }

    /// A view when the strides allow it, otherwise a contiguous copy.
    pub fn reshape(&self, shape: &[isize]) -> Result<Tensor> {
        match self.layout.reshape_view(shape)? {
            Some(layout) => Ok(self.with_layout(layout)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    /// The elements for writing in place, when the tensor is contiguous, holds
    /// `T`, and is the only handle on writable storage rtserve owns (an owned
    /// buffer or an arena region); None otherwise.
    pub fn unique_elements_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        if T::DTYPE != self.dtype || !self.is_contiguous() {
            return None;
        }
        let (offset, n) = (self.layout.offset(), self.numel());
        let bytes = Arc::get_mut(&mut self.storage)?.bytes_mut()?;
        let len = bytes.len() / std::mem::size_of::<T>();
        // SAFETY: `from_parts` checked the storage is aligned for the dtype and holds
        // every element; every bit pattern is a valid element; the borrow is exclusive
        // (`Arc::get_mut` succeeded and `self` is borrowed mutably).
        let all = unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), len) };
        all.get_mut(offset..offset + n)
    }

    /// Itself when already contiguous, otherwise a row-major copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let mut buf = OutBuffer::new(self.nbytes(), false)?;
        let size = self.dtype.size();
        let src = self.storage.as_bytes();
        let dst = buf.as_mut_slice();
        let (shape, strides) = (self.layout.shape(), self.layout.strides());
        let last = shape.len().saturating_sub(1);
        // Copy whole unit-stride rows of the last dimension at once, else one element at a time.
        let (walk, row) = if !shape.is_empty() && strides[last] == 1 && shape[last] > 1 {
            let outer = Layout::new(
                shape[..last].to_vec(),
                strides[..last].to_vec(),
                self.layout.offset(),
            )?;
            (outer, shape[last] * size)
        } else {
            (self.layout.clone(), size)
        };
        let mut out = 0usize;
        for_each_offset(&walk, |off| {
            let at = off * size;
            dst[out..out + row].copy_from_slice(&src[at..at + row]);
            out += row;
        });
        Tensor::from_storage(Arc::new(buf.into_storage()), self.dtype, self.shape())
    }

    /// The elements in row-major order as bytes (copied).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let c = self.contiguous()?;
        let start = c.offset() * c.dtype.size();
        Ok(c.storage.as_bytes()[start..start + c.nbytes()].to_vec())
    }

    /// Row-major bytes, borrowed when contiguous.
    pub fn contiguous_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        if self.is_contiguous() {
            let start = self.offset() * self.dtype.size();
            Ok(std::borrow::Cow::Borrowed(
                &self.storage.as_bytes()[start..start + self.nbytes()],
            ))
        } else {
            Ok(std::borrow::Cow::Owned(self.to_bytes()?))
        }
    }

    /// A contiguous copy converted to `dtype` (numpy `astype` semantics, see [`crate::cast`]).
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            let c = self.contiguous()?;
            // `contiguous` returns a view when possible; astype always copies.
            return if Arc::ptr_eq(&c.storage, &self.storage) {
                Tensor::from_bytes(dtype, self.shape(), &c.to_bytes()?)
            } else {
                Ok(c)
            };
        }
        let mut buf = OutBuffer::new(
            self.numel()
                .checked_mul(dtype.size())
                .ok_or_else(|| Error::shape("cast", "byte size overflows"))?,
            false,
        )?;
        with_element_type!(self.dtype, S, {
            let src: Vec<S> = self.elements::<S>()?;
            with_element_type!(dtype, D, {
                write_elements(buf.as_mut_slice(), src.iter().map(|&s| convert::<S, D>(s)));
            })
        });
        Tensor::from_storage(Arc::new(buf.into_storage()), dtype, self.shape())
    }

    /// The elements in row-major order; `T` must match the dtype.
    pub fn elements<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::dtype(
                "elements",
                format!("tensor holds {}, asked for {}", self.dtype, T::DTYPE),
            ));
        }
        let bytes = self.storage.as_bytes();
        let size = self.dtype.size();
        let mut out = Vec::with_capacity(self.numel());
        for_each_offset(&self.layout, |off| {
            let at = off * size;
            out.push(read_element::<T>(&bytes[at..at + size]));
        });
        Ok(out)
    }

    /// Up to `max` leading elements formatted for `repr`.
    pub fn preview(&self, max: usize) -> Vec<String> {
        let bytes = self.storage.as_bytes();
        let size = self.dtype.size();
        let mut out = Vec::new();
        for_each_offset(&self.layout, |off| {
            if out.len() < max {
                let at = off * size;
                let b = &bytes[at..at + size];
                let s = match self.dtype {
                    DType::Bool => {
                        if b[0] != 0 {
                            "True".to_string()
                        } else {
                            "False".to_string()
                        }
                    }
                    DType::F64 => format!("{:?}", read_element::<f64>(b)),
                    d if d.is_float() => with_element_type!(d, T, {
                        format!("{:?}", read_element::<T>(b).to_f64() as f32)
                    }),
                    d => with_element_type!(d, T, { read_element::<T>(b).to_i64().to_string() }),
                };
                out.push(s);
            }
        });
        out
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(dtype={}, shape={:?}, strides={:?}, offset={}, {:?})",
            self.dtype,
            self.shape(),
            self.strides(),
            self.offset(),
            self.storage
        )
    }
}

/// Calls `f` with the storage offset (in elements) of every element, row-major.
pub fn for_each_offset(layout: &Layout, mut f: impl FnMut(usize)) {
    let shape = layout.shape();
    let strides = layout.strides();
    if shape.contains(&0) {
        return;
    }
    let n = shape.len();
    let mut idx = vec![0usize; n];
    let mut off = layout.offset() as isize;
    loop {
        f(off as usize);
        // Odometer increment from the last dimension.
        let mut d = n;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d] as isize;
            idx[d] = 0;
        }
    }
}

fn read_element<T: Element>(bytes: &[u8]) -> T {
    debug_assert_eq!(bytes.len(), std::mem::size_of::<T>());
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes, and every bit pattern is a
    // valid T for the element types (ints, IEEE floats, Bool8 over u8).
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn write_elements<T: Element>(dst: &mut [u8], values: impl Iterator<Item = T>) {
    let size = std::mem::size_of::<T>();
    for (chunk, v) in dst.chunks_exact_mut(size).zip(values) {
        // SAFETY: `chunk` holds exactly size_of::<T>() writable bytes.
        unsafe { std::ptr::write_unaligned(chunk.as_mut_ptr().cast::<T>(), v) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arange(n: usize, shape: &[usize]) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_slice(&v, shape).unwrap()
    }

    #[test]
    fn views_share_storage_and_copy_only_when_needed() {
        let t = arange(24, &[2, 3, 4]);
        let c = t.contiguous().unwrap();
        assert!(Arc::ptr_eq(t.storage(), c.storage()));
        let p = t.permute(&[2, 0, 1]).unwrap();
        assert!(Arc::ptr_eq(t.storage(), p.storage()));
        let pc = p.contiguous().unwrap();
        assert!(!Arc::ptr_eq(t.storage(), pc.storage()));
        assert_eq!(pc.elements::<f32>().unwrap()[..4], [0.0, 4.0, 8.0, 12.0]);
    }

    #[test]
    fn reshape_falls_back_to_copy() {
        let t = arange(12, &[3, 4]).t();
        let r = t.reshape(&[12]).unwrap();
        assert_eq!(r.elements::<f32>().unwrap()[..4], [0.0, 4.0, 8.0, 1.0]);
        let v = arange(12, &[3, 4]).reshape(&[2, -1]).unwrap();
        assert_eq!(v.shape(), &[2, 6]);
    }

    #[test]
    fn negative_steps_and_cast() {
        let t = arange(10, &[10]);
        let r = t
            .index(&[IndexItem::Slice {
                start: None,
                stop: None,
                step: -3,
            }])
            .unwrap();
        assert_eq!(r.elements::<f32>().unwrap(), vec![9.0, 6.0, 3.0, 0.0]);
        let i = r.cast(DType::I8).unwrap();
        assert_eq!(i.elements::<i8>().unwrap(), vec![9, 6, 3, 0]);
        assert!(r.elements::<f64>().is_err());
    }

    #[test]
    fn expand_reads_broadcast_values() {
        let t = arange(3, &[3, 1]).expand(&[2, 3, 2]).unwrap();
        assert_eq!(
            t.contiguous().unwrap().elements::<f32>().unwrap(),
            vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
        );
    }

    #[test]
    fn wrong_storage_size_is_an_error() {
        let s = Arc::new(Storage::owned(AlignedBuffer::zeroed(10).unwrap()));
        assert!(Tensor::from_storage(s, DType::F32, &[3]).is_err());
    }
}
