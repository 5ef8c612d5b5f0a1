//! `rtserve.Tensor`: a thin Python face over the core tensor.

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyEllipsis, PySlice, PyString, PyTuple};
use rtserve_core::{DType, IndexItem, Tensor};

use crate::errors::{core, detached, guard, unsupported};
use crate::{dlpack, numpy_interop};

/// An n-dimensional array held by rtserve. Views share storage with their
/// source; `numpy()` and `np.asarray(t)` share memory with the tensor.
#[pyclass(name = "Tensor", module = "rtserve", frozen)]
pub struct PyTensor {
    pub inner: Tensor,
}

impl PyTensor {
    pub fn new(inner: Tensor) -> Self {
        PyTensor { inner }
    }
}

/// The core tensor behind any tensor-like argument: an `rt.Tensor` (shared, no
/// copy), a numpy array (zero-copy when aligned), or anything `numpy.asarray`
/// takes (copied). With `bf16_bits`, a uint16 array is read as bf16 bits.
pub fn to_tensor(py: Python<'_>, obj: &Bound<'_, PyAny>, bf16_bits: bool) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.get().inner.clone());
    }
    let arr = if obj.cast::<PyUntypedArray>().is_ok() {
        obj.clone()
    } else {
        py.import("numpy")?.call_method1("asarray", (obj,))?
    };
    let descr = arr.cast::<PyUntypedArray>()?.dtype();
    let is_u16 = descr.kind() == b'u' && descr.itemsize() == 2;
    numpy_interop::from_numpy(py, &arr, (bf16_bits && is_u16).then_some(DType::BF16))
}

/// A dtype from a string (`"f32"`, `"float32"`) or anything `numpy.dtype` accepts.
pub fn parse_dtype(obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    if let Ok(s) = obj.cast::<PyString>() {
        return core(DType::from_name(&s.to_cow()?));
    }
    let py = obj.py();
    let name: String = py
        .import("numpy")?
        .call_method1("dtype", (obj,))?
        .getattr("name")?
        .extract()?;
    core(DType::from_name(&name))
}

fn index_int(obj: &Bound<'_, PyAny>) -> PyResult<isize> {
    // Out-of-range Python ints clamp; the slice logic then treats them as "past the end".
    match obj.extract::<isize>() {
        Ok(v) => Ok(v),
        Err(_) => {
            let index = obj.call_method0("__index__")?;
            Ok(if index.gt(0)? { isize::MAX } else { isize::MIN })
        }
    }
}

fn index_item(item: &Bound<'_, PyAny>) -> PyResult<IndexItem> {
    if item.is_none() {
        return Ok(IndexItem::NewAxis);
    }
    if item.is_instance_of::<PyEllipsis>() {
        return Ok(IndexItem::Ellipsis);
    }
    if let Ok(slice) = item.cast::<PySlice>() {
        let get = |name: &str| -> PyResult<Option<isize>> {
            let v = slice.getattr(name)?;
            if v.is_none() {
                Ok(None)
            } else {
                index_int(&v).map(Some)
            }
        };
        let step = get("step")?.unwrap_or(1);
        return Ok(IndexItem::Slice {
            start: get("start")?,
            stop: get("stop")?,
            step,
        });
    }
    if item.is_instance_of::<pyo3::types::PyBool>() || !item.hasattr("__index__")? {
        return Err(unsupported(format!(
            "Tensor indexing with {} is not supported (ints, slices, None and ... are); use t.numpy() for advanced indexing",
            item.get_type().name()?
        )));
    }
    Ok(IndexItem::Index(index_int(item)?))
}

fn shape_arg(args: &Bound<'_, PyTuple>) -> PyResult<Vec<isize>> {
    // Accept both t.reshape(2, 3) and t.reshape((2, 3)).
    if args.len() == 1 {
        let first = args.get_item(0)?;
        if !first.hasattr("__index__")? {
            return first.extract();
        }
    }
    args.extract()
}

fn to_usize(op: &str, v: Vec<isize>) -> PyResult<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                PyValueError::new_err(format!("{op}: negative dimension {d} in {v:?}"))
            })
        })
        .collect()
}

#[pymethods]
impl PyTensor {
    /// The shape as a tuple of ints.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.shape())
    }

    /// The dtype name: f32, f64, f16, bf16, i64, i32, i16, i8, u8 or bool.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    /// Strides in elements (numpy's are in bytes).
    #[getter]
    fn strides<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.strides())
    }

    /// Offset of the first element in the storage, in elements.
    #[getter]
    fn offset(&self) -> usize {
        self.inner.offset()
    }

    /// Bytes of the elements this tensor addresses.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    #[getter]
    fn ndim(&self) -> usize {
        self.inner.ndim()
    }

    /// Number of elements.
    #[getter]
    fn size(&self) -> usize {
        self.inner.numel()
    }

    /// Where the bytes live: "owned", "mmap" or "external" (numpy, DLPack).
    #[getter]
    fn storage_kind(&self) -> &'static str {
        self.inner.storage().kind_name()
    }

    /// False for memory-mapped weights and read-only external memory.
    #[getter]
    fn writable(&self) -> bool {
        self.inner.storage().is_writable()
    }

    /// The transpose (all dimensions reversed), a view.
    #[getter(T)]
    fn t(&self) -> PyTensor {
        PyTensor::new(self.inner.t())
    }

    fn __len__(&self) -> PyResult<usize> {
        self.inner
            .shape()
            .first()
            .copied()
            .ok_or_else(|| PyTypeError::new_err("len() of a 0-d tensor"))
    }

    fn is_contiguous(&self) -> bool {
        self.inner.is_contiguous()
    }

    /// Itself when row-major contiguous, otherwise a contiguous copy.
    fn contiguous(&self, py: Python<'_>) -> PyResult<PyTensor> {
        let t = self.inner.clone();
        detached(py, move || t.contiguous()).map(PyTensor::new)
    }

    /// A view with new shape when the strides allow it, otherwise a copy. One dim may be -1.
    #[pyo3(signature = (*shape))]
    fn reshape(&self, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let shape = shape_arg(shape)?;
        guard(|| core(self.inner.reshape(&shape)).map(PyTensor::new))
    }

    /// Permutes dimensions (no arguments: reverses them, like numpy).
    #[pyo3(signature = (*axes))]
    fn transpose(&self, axes: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        if axes.is_empty() {
            return Ok(self.t());
        }
        let axes = to_usize("transpose", shape_arg(axes)?)?;
        guard(|| core(self.inner.permute(&axes)).map(PyTensor::new))
    }

    /// Reorders dimensions, a view.
    #[pyo3(signature = (*dims))]
    fn permute(&self, dims: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        self.transpose(dims)
    }

    /// Broadcasts to `shape` without copying (stride 0 on expanded dims).
    #[pyo3(signature = (*shape))]
    fn expand(&self, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let shape = to_usize("expand", shape_arg(shape)?)?;
        guard(|| core(self.inner.expand(&shape)).map(PyTensor::new))
    }

    /// A converted copy (numpy `astype` semantics for in-range values).
    fn astype(&self, py: Python<'_>, dtype: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let dtype = parse_dtype(dtype)?;
        let t = self.inner.clone();
        detached(py, move || t.cast(dtype)).map(PyTensor::new)
    }

    fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let items = if let Ok(tuple) = key.cast::<PyTuple>() {
            tuple
                .iter()
                .map(|i| index_item(&i))
                .collect::<PyResult<Vec<_>>>()?
        } else {
            vec![index_item(key)?]
        };
        guard(|| core(self.inner.index(&items)).map(PyTensor::new))
    }

    /// A numpy array sharing this tensor's memory (read-only when the tensor is).
    /// bf16 comes out as `ml_dtypes.bfloat16` when ml_dtypes is installed, else as uint16 bits.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guard(|| numpy_interop::to_numpy(py, &self.inner))
    }

    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut arr = self.numpy(py)?;
        if let Some(dtype) = dtype {
            arr = arr.call_method1("astype", (dtype,))?;
        } else if copy == Some(true) {
            arr = arr.call_method0("copy")?;
        }
        Ok(arr)
    }

    /// Nested Python lists of the values.
    fn tolist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.numpy(py)?.call_method0("tolist")
    }

    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Some(s) = stream {
            if !s.is_none() && s.extract::<i64>().map(|v| v != -1).unwrap_or(true) {
                return Err(PyValueError::new_err(
                    "__dlpack__: stream must be None for CPU tensors",
                ));
            }
        }
        if let Some((device_type, _)) = dl_device {
            if device_type != 1 {
                return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                    "__dlpack__: cannot export to DLPack device type {device_type}; rtserve tensors are in CPU memory"
                )));
            }
        }
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        guard(|| dlpack::export(py, &self.inner, versioned, copy))
    }

    /// numpy's binary operators (`ndarray @ tensor`, `ndarray + tensor`) defer to the
    /// tensor's reflected methods instead of converting it to an array.
    #[classattr]
    fn __array_ufunc__(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (1, 0)
    }

    fn __repr__(&self) -> String {
        const MAX: usize = 6;
        let values = self.inner.preview(MAX + 1);
        let more = values.len() > MAX;
        let mut shown = values[..values.len().min(MAX)].join(", ");
        if more {
            shown.push_str(", ...");
        }
        let shape: Vec<String> = self.inner.shape().iter().map(|d| d.to_string()).collect();
        let shape = if shape.len() == 1 {
            format!("({},)", shape[0])
        } else {
            format!("({})", shape.join(", "))
        };
        format!(
            "Tensor(dtype={}, shape={shape}, values=[{shown}])",
            self.inner.dtype()
        )
    }
}
