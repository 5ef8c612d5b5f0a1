//! numpy <-> Tensor without copies where the layout allows.
//!
//! numpy -> Tensor: an aligned array whose byte strides are multiples of its
//! item size is wrapped as external storage that keeps the array alive;
//! anything else (misaligned, odd strides, non-native byte order) is copied.
//! Tensor -> numpy: numpy reads the tensor's `__array_interface__` through a
//! small view object, so the array's base keeps the storage alive.

use std::sync::Arc;

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyDict, PyTuple};
use rtserve_core::{DType, ExternalBuffer, Layout, Storage, Tensor};

use crate::errors::{core, dtype_error};

/// numpy's flag for arrays that may be written through.
const NPY_ARRAY_WRITEABLE: i32 = 0x0400;

/// A numpy array's memory, kept alive by a reference to the array.
struct NumpyOwner {
    _array: Py<PyAny>,
    ptr: usize,
    len: usize,
    writable: bool,
}

impl ExternalBuffer for NumpyOwner {
    fn as_ptr(&self) -> *const u8 {
        self.ptr as *const u8
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
}

/// The rtserve dtype of a numpy dtype.
/// The dtype of numpy's (kind, itemsize); `name` (a Python attribute lookup, slow next to
/// the rest of a feed) is asked only for the kinds that need it (ml_dtypes' bfloat16) and
/// for errors.
fn dtype_of(kind: u8, itemsize: usize, name: impl Fn() -> PyResult<String>) -> PyResult<DType> {
    Ok(match (kind, itemsize) {
        (b'f', 4) => DType::F32,
        (b'f', 8) => DType::F64,
        (b'f', 2) => DType::F16,
        (b'i', 8) => DType::I64,
        (b'i', 4) => DType::I32,
        (b'i', 2) => DType::I16,
        (b'i', 1) => DType::I8,
        (b'u', 1) => DType::U8,
        (b'b', 1) => DType::Bool,
        _ => match name()? {
            n if n == "bfloat16" => DType::BF16,
            n => {
                return Err(dtype_error(format!(
                    "tensor: numpy dtype {n} is not supported; supported: float32, float64, float16, bfloat16 (ml_dtypes), int64, int32, int16, int8, uint8, bool"
                )))
            }
        },
    })
}

/// Wraps a numpy array (zero-copy when aligned), reading its bits as `as_bits` when given.
pub fn from_numpy(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    as_bits: Option<DType>,
) -> PyResult<Tensor> {
    wrap(py, obj, as_bits, false)
}

fn wrap(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    as_bits: Option<DType>,
    copied: bool,
) -> PyResult<Tensor> {
    let arr = obj.cast::<PyUntypedArray>()?;
    let descr = arr.dtype();
    if descr.is_native_byteorder() == Some(false) {
        let native = descr.call_method1("newbyteorder", ("=",))?;
        let copy = arr.call_method1("astype", (native,))?;
        return wrap(py, &copy, as_bits, copied);
    }
    let name = || -> PyResult<String> { descr.getattr(intern!(py, "name"))?.extract() };
    let (kind, itemsize) = (descr.kind(), descr.itemsize());
    let dtype = match as_bits {
        Some(d) if d.size() == itemsize && (kind == b'u' || name()? == "bfloat16") => d,
        Some(d) => {
            return Err(dtype_error(format!(
                "tensor: cannot reinterpret numpy {} as {d}: raw bits need an unsigned array of the same item size",
                name()?
            )))
        }
        None => dtype_of(kind, itemsize, name)?,
    };
    if itemsize != dtype.size() {
        return Err(dtype_error(format!(
            "tensor: numpy {} has item size {itemsize}, {dtype} needs {}",
            name()?,
            dtype.size()
        )));
    }
    let shape = arr.shape().to_vec();
    let byte_strides = arr.strides().to_vec();
    if shape.contains(&0) {
        return core(Tensor::zeros(dtype, &shape));
    }
    // SAFETY: `arr` is a live numpy array (checked by the cast above); reading its
    // data pointer and flags fields does not mutate it.
    let (data, flags) = unsafe {
        let raw = arr.as_array_ptr();
        ((*raw).fields.data as usize, (*raw).fields.flags)
    };
    let zero_copy = data % itemsize == 0
        && shape
            .iter()
            .zip(&byte_strides)
            .all(|(&d, &s)| d == 1 || s % itemsize as isize == 0);
    if !zero_copy {
        if copied {
            return Err(crate::errors::to_py(rtserve_core::Error::Internal(
                "numpy copy is still misaligned".into(),
            )));
        }
        // A fresh C-order copy is aligned (ascontiguousarray would return a
        // contiguous-but-misaligned array unchanged).
        let copy = arr.call_method("copy", (), Some(&[("order", "C")].into_py_dict(py)?))?;
        return wrap(py, &copy, as_bits, true);
    }
    // Extent of the addressed bytes, which may start before `data` with negative strides.
    let (mut lo, mut hi) = (0isize, 0isize);
    let mut strides = Vec::with_capacity(shape.len());
    for (&d, &s) in shape.iter().zip(&byte_strides) {
        let s = if d == 1 { 0 } else { s };
        let reach = (d as isize - 1) * s;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
        strides.push(s / itemsize as isize);
    }
    let owner = NumpyOwner {
        _array: arr.clone().into_any().unbind(),
        ptr: (data as isize + lo) as usize,
        len: (hi - lo) as usize + itemsize,
        writable: flags & NPY_ARRAY_WRITEABLE != 0,
    };
    let offset = (-lo) as usize / itemsize;
    let layout = core(Layout::new(shape, strides, offset))?;
    core(Tensor::from_parts(
        Arc::new(Storage::external(Box::new(owner))),
        dtype,
        layout,
    ))
}

#[cfg(target_endian = "little")]
macro_rules! native {
    ($code:literal) => {
        concat!("<", $code)
    };
}
#[cfg(target_endian = "big")]
macro_rules! native {
    ($code:literal) => {
        concat!(">", $code)
    };
}

/// numpy's type string for a dtype (bf16 travels as uint16 bits).
fn typestr(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => native!("f4"),
        DType::F64 => native!("f8"),
        DType::F16 => native!("f2"),
        DType::BF16 => native!("u2"),
        DType::I64 => native!("i8"),
        DType::I32 => native!("i4"),
        DType::I16 => native!("i2"),
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    }
}

/// The object numpy reads to build a view of a tensor.
#[pyclass(frozen, module = "rtserve._core")]
pub struct ArrayView {
    tensor: Tensor,
}

#[pymethods]
impl ArrayView {
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = &self.tensor;
        let size = t.dtype().size() as isize;
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, t.shape())?)?;
        d.set_item("typestr", typestr(t.dtype()))?;
        d.set_item(
            "strides",
            PyTuple::new(py, t.strides().iter().map(|&s| s * size))?,
        )?;
        d.set_item("data", (t.data_ptr() as usize, !t.storage().is_writable()))?;
        Ok(d)
    }
}

static BFLOAT16: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();

/// `ml_dtypes.bfloat16` when that package is installed.
pub fn ml_bfloat16(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    BFLOAT16
        .get_or_init(py, || {
            py.import("ml_dtypes")
                .and_then(|m| m.getattr("bfloat16"))
                .ok()
                .map(Bound::unbind)
        })
        .as_ref()
        .map(|b| b.bind(py))
}

/// A numpy view of `t` sharing its memory (read-only when the storage is).
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let view = Bound::new(py, ArrayView { tensor: t.clone() })?;
    let arr = py.import("numpy")?.call_method1("asarray", (view,))?;
    match (t.dtype(), ml_bfloat16(py)) {
        (DType::BF16, Some(bf16)) => arr.call_method1("view", (bf16,)),
        _ => Ok(arr),
    }
}
