//! DLPack both ways (CPU memory only): `Tensor.__dlpack__` exports a capsule
//! that keeps the storage alive until the consumer calls the deleter;
//! `from_dlpack` imports any producer's capsule (numpy, torch, ...) without a
//! copy and calls the producer's deleter when the last view is dropped.
//!
//! This file is an FFI edge: the struct layouts follow dlpack.h (v1.0), and
//! every `unsafe` block states the invariant it relies on.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use rtserve_core::{DType, ExternalBuffer, Layout, Storage, Tensor};

use crate::errors::{core, device_error, dtype_error};

const KDL_CPU: i32 = 1;
const FLAG_READ_ONLY: u64 = 1 << 0;
const FLAG_IS_COPIED: u64 = 1 << 1;
const MAX_NDIM: i32 = 64;

const NAME_LEGACY: &CStr = c"dltensor";
const NAME_VERSIONED: &CStr = c"dltensor_versioned";
const NAME_USED_LEGACY: &CStr = c"used_dltensor";
const NAME_USED_VERSIONED: &CStr = c"used_dltensor_versioned";

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

fn dl_dtype(dtype: DType) -> DLDataType {
    let (code, bits) = match dtype {
        DType::F32 => (2, 32),
        DType::F64 => (2, 64),
        DType::F16 => (2, 16),
        DType::BF16 => (4, 16),
        DType::I64 => (0, 64),
        DType::I32 => (0, 32),
        DType::I16 => (0, 16),
        DType::I8 => (0, 8),
        DType::U8 => (1, 8),
        DType::Bool => (6, 8),
    };
    DLDataType {
        code,
        bits,
        lanes: 1,
    }
}

fn from_dl_dtype(t: DLDataType) -> PyResult<DType> {
    Ok(match (t.code, t.bits, t.lanes) {
        (2, 32, 1) => DType::F32,
        (2, 64, 1) => DType::F64,
        (2, 16, 1) => DType::F16,
        (4, 16, 1) => DType::BF16,
        (0, 64, 1) => DType::I64,
        (0, 32, 1) => DType::I32,
        (0, 16, 1) => DType::I16,
        (0, 8, 1) => DType::I8,
        (1, 8, 1) => DType::U8,
        (6, 8, 1) | (1, 1, 1) => DType::Bool,
        (c, b, l) => {
            return Err(dtype_error(format!(
                "from_dlpack: DLPack dtype (code {c}, bits {b}, lanes {l}) is not supported"
            )))
        }
    })
}

/// What an exported capsule owns: the tensor (so its storage lives) and the
/// shape/strides arrays the DLTensor points into. `managed` comes first so a
/// pointer to it is a pointer to the whole context.
#[repr(C)]
struct Export<M> {
    managed: M,
    _tensor: Tensor,
    shape: Vec<i64>,
    strides: Vec<i64>,
}

unsafe extern "C" fn delete_legacy(p: *mut DLManagedTensor) {
    if !p.is_null() {
        // SAFETY: `p` is the `managed` field at the start of a Box<Export<_>> made
        // in `export`; DLPack calls the deleter exactly once.
        drop(unsafe { Box::from_raw(p.cast::<Export<DLManagedTensor>>()) });
    }
}

unsafe extern "C" fn delete_versioned(p: *mut DLManagedTensorVersioned) {
    if !p.is_null() {
        // SAFETY: as in `delete_legacy`.
        drop(unsafe { Box::from_raw(p.cast::<Export<DLManagedTensorVersioned>>()) });
    }
}

unsafe extern "C" fn capsule_destructor_legacy(capsule: *mut ffi::PyObject) {
    // SAFETY: called by CPython with a valid capsule. An unconsumed capsule (name
    // unchanged) still owns the tensor; a consumed one was renamed and is not ours.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME_LEGACY.as_ptr()) == 1 {
            let p =
                ffi::PyCapsule_GetPointer(capsule, NAME_LEGACY.as_ptr()).cast::<DLManagedTensor>();
            if let Some(deleter) = (*p).deleter {
                deleter(p);
            }
        }
    }
}

unsafe extern "C" fn capsule_destructor_versioned(capsule: *mut ffi::PyObject) {
    // SAFETY: as in `capsule_destructor_legacy`.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME_VERSIONED.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(capsule, NAME_VERSIONED.as_ptr())
                .cast::<DLManagedTensorVersioned>();
            if let Some(deleter) = (*p).deleter {
                deleter(p);
            }
        }
    }
}

fn dl_tensor(t: &Tensor, shape: &mut [i64], strides: &mut [i64]) -> DLTensor {
    DLTensor {
        data: t.data_ptr() as *mut c_void,
        device: DLDevice {
            device_type: KDL_CPU,
            device_id: 0,
        },
        ndim: shape.len() as i32,
        dtype: dl_dtype(t.dtype()),
        shape: shape.as_mut_ptr(),
        strides: strides.as_mut_ptr(),
        byte_offset: 0,
    }
}

/// `Tensor.__dlpack__`: a versioned capsule when the consumer allows DLPack 1.x.
pub fn export<'py>(
    py: Python<'py>,
    tensor: &Tensor,
    versioned: bool,
    copy: Option<bool>,
) -> PyResult<Bound<'py, PyAny>> {
    let read_only = !tensor.storage().is_writable();
    // A legacy capsule cannot say "read-only", and consumers then write through it.
    let must_copy = copy == Some(true) || (read_only && !versioned);
    if must_copy && copy == Some(false) {
        return Err(PyBufferError::new_err(
            "__dlpack__: this tensor is read-only (memory-mapped) and the consumer asked for a legacy capsule with copy=False",
        ));
    }
    let t = if must_copy {
        let bytes = core(tensor.to_bytes())?;
        core(Tensor::from_bytes(tensor.dtype(), tensor.shape(), &bytes))?
    } else {
        tensor.clone()
    };
    let mut shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let mut strides: Vec<i64> = t.strides().iter().map(|&s| s as i64).collect();
    let dl = dl_tensor(&t, &mut shape, &mut strides);
    let capsule = if versioned {
        let mut flags = 0;
        if must_copy {
            flags |= FLAG_IS_COPIED;
        } else if read_only {
            flags |= FLAG_READ_ONLY;
        }
        let ctx = Box::new(Export {
            managed: DLManagedTensorVersioned {
                version: DLPackVersion { major: 1, minor: 0 },
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_versioned),
                flags,
                dl_tensor: dl,
            },
            _tensor: t,
            shape,
            strides,
        });
        let p = Box::into_raw(ctx);
        // SAFETY: `p` is a valid, uniquely owned pointer; the vectors' heap buffers
        // did not move when the Box was created, so dl_tensor's pointers stay valid.
        unsafe {
            (*p).managed.manager_ctx = p.cast();
            ffi::PyCapsule_New(
                p.cast(),
                NAME_VERSIONED.as_ptr(),
                Some(capsule_destructor_versioned),
            )
        }
    } else {
        let ctx = Box::new(Export {
            managed: DLManagedTensor {
                dl_tensor: dl,
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_legacy),
            },
            _tensor: t,
            shape,
            strides,
        });
        let p = Box::into_raw(ctx);
        // SAFETY: as above.
        unsafe {
            (*p).managed.manager_ctx = p.cast();
            ffi::PyCapsule_New(
                p.cast(),
                NAME_LEGACY.as_ptr(),
                Some(capsule_destructor_legacy),
            )
        }
    };
    // SAFETY: PyCapsule_New returns a new reference or NULL with an exception set
    // (on NULL the context leaks, which only happens when Python is out of memory).
    unsafe { Bound::from_owned_ptr_or_err(py, capsule) }
}

/// Keeps an imported DLPack tensor alive; calls the producer's deleter on drop.
struct DlpackOwner {
    managed: usize,
    versioned: bool,
    ptr: usize,
    len: usize,
    writable: bool,
}

impl ExternalBuffer for DlpackOwner {
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

impl Drop for DlpackOwner {
    fn drop(&mut self) {
        // Producers' deleters (numpy, torch) may touch Python objects: hold the GIL.
        Python::attach(|_| {
            // SAFETY: `managed` came from a capsule we consumed (renamed), so we own
            // exactly one call of its deleter.
            unsafe {
                if self.versioned {
                    let p = self.managed as *mut DLManagedTensorVersioned;
                    if let Some(d) = (*p).deleter {
                        d(p)
                    }
                } else {
                    let p = self.managed as *mut DLManagedTensor;
                    if let Some(d) = (*p).deleter {
                        d(p)
                    }
                }
            }
        });
    }
}

/// `rt.from_dlpack(x)`: imports a CPU tensor from any DLPack producer without a copy.
pub fn import(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let capsule = if obj.hasattr("__dlpack__")? {
        if obj.hasattr("__dlpack_device__")? {
            let (device_type, device_id): (i32, i32) =
                obj.call_method0("__dlpack_device__")?.extract()?;
            if device_type != KDL_CPU {
                return Err(device_error(format!(
                    "from_dlpack: the tensor lives on DLPack device type {device_type} (id {device_id}); only CPU memory (type 1) can be imported"
                )));
            }
        }
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("max_version", (1, 0))?;
        match obj.call_method("__dlpack__", (), Some(&kwargs)) {
            Ok(c) => c,
            Err(e) if e.is_instance_of::<PyTypeError>(py) => obj.call_method0("__dlpack__")?,
            Err(e) => return Err(e),
        }
    } else if obj.is_instance_of::<pyo3::types::PyCapsule>() {
        obj.clone()
    } else {
        return Err(PyTypeError::new_err(format!(
            "from_dlpack: expected an object with __dlpack__ or a DLPack capsule, got {}",
            obj.get_type().name()?
        )));
    };
    let raw = capsule.as_ptr();
    // SAFETY: PyCapsule_IsValid accepts any object pointer and only checks type and name.
    let versioned = unsafe { ffi::PyCapsule_IsValid(raw, NAME_VERSIONED.as_ptr()) } == 1;
    // SAFETY: as above.
    let legacy = unsafe { ffi::PyCapsule_IsValid(raw, NAME_LEGACY.as_ptr()) } == 1;
    if !versioned && !legacy {
        return Err(PyValueError::new_err(
            "from_dlpack: the capsule is not an unconsumed 'dltensor' or 'dltensor_versioned' capsule",
        ));
    }
    // SAFETY: the name was checked just above, so the pointer is a DLManagedTensor
    // (legacy) or DLManagedTensorVersioned owned by this capsule until renamed.
    let (managed, dl, flags): (usize, &DLTensor, u64) = unsafe {
        if versioned {
            let p = ffi::PyCapsule_GetPointer(raw, NAME_VERSIONED.as_ptr())
                .cast::<DLManagedTensorVersioned>();
            if (*p).version.major != 1 {
                return Err(PyBufferError::new_err(format!(
                    "from_dlpack: DLPack version {}.{} is not supported (1.x is)",
                    (*p).version.major,
                    (*p).version.minor
                )));
            }
            (p as usize, &(*p).dl_tensor, (*p).flags)
        } else {
            let p = ffi::PyCapsule_GetPointer(raw, NAME_LEGACY.as_ptr()).cast::<DLManagedTensor>();
            (p as usize, &(*p).dl_tensor, 0)
        }
    };
    if dl.device.device_type != KDL_CPU {
        return Err(device_error(format!(
            "from_dlpack: DLPack device type {} is not CPU memory",
            dl.device.device_type
        )));
    }
    if !(0..=MAX_NDIM).contains(&dl.ndim) {
        return Err(PyValueError::new_err(format!(
            "from_dlpack: invalid ndim {}",
            dl.ndim
        )));
    }
    let dtype = from_dl_dtype(dl.dtype)?;
    let ndim = dl.ndim as usize;
    // SAFETY: DLPack guarantees `shape` (and `strides` unless NULL) point to ndim
    // int64 values valid for the capsule's lifetime.
    let (shape_raw, strides_raw): (Vec<i64>, Option<Vec<i64>>) = unsafe {
        let shape = if ndim == 0 {
            vec![]
        } else {
            std::slice::from_raw_parts(dl.shape, ndim).to_vec()
        };
        let strides = if dl.strides.is_null() || ndim == 0 {
            None
        } else {
            Some(std::slice::from_raw_parts(dl.strides, ndim).to_vec())
        };
        (shape, strides)
    };
    if shape_raw.iter().any(|&d| d < 0) {
        return Err(PyValueError::new_err(format!(
            "from_dlpack: negative dimension in shape {shape_raw:?}"
        )));
    }
    let shape: Vec<usize> = shape_raw.iter().map(|&d| d as usize).collect();
    let strides: Vec<isize> = match strides_raw {
        Some(s) => s.iter().map(|&s| s as isize).collect(),
        None => rtserve_core::shape::contiguous_strides(&shape),
    };
    let size = dtype.size();
    let data = (dl.data as usize).wrapping_add(dl.byte_offset as usize);

    // Element extent relative to `data`.
    let (mut lo, mut hi) = (0isize, 0isize);
    let empty = shape.contains(&0);
    for (&d, &s) in shape.iter().zip(&strides) {
        let reach = (d as isize - 1).saturating_mul(s);
        if reach < 0 {
            lo = lo.saturating_add(reach);
        } else {
            hi = hi.saturating_add(reach);
        }
    }
    let tensor = if empty {
        core(Tensor::zeros(dtype, &shape))?
    } else {
        let base = data as isize + lo * size as isize;
        let len = ((hi - lo) as usize + 1) * size;
        if !(base as usize).is_multiple_of(size) {
            // Misaligned producer memory: copy the extent into an aligned buffer.
            // SAFETY: the producer guarantees the addressed elements are readable.
            let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, len) };
            let storage = Arc::new(Storage::owned(core(
                rtserve_core::storage::AlignedBuffer::from_bytes(bytes),
            )?));
            let layout = core(Layout::new(shape, strides, (-lo) as usize))?;
            let t = core(Tensor::from_parts(storage, dtype, layout))?;
            // The copy is ours; release the producer's memory via a normal owner drop.
            drop(consume(raw, versioned, managed, 0, 0, false));
            return Ok(t);
        }
        let owner = consume(
            raw,
            versioned,
            managed,
            base as usize,
            len,
            flags & FLAG_READ_ONLY == 0,
        );
        let layout = core(Layout::new(shape, strides, (-lo) as usize))?;
        core(Tensor::from_parts(
            Arc::new(Storage::external(Box::new(owner))),
            dtype,
            layout,
        ))?
    };
    if empty {
        drop(consume(raw, versioned, managed, 0, 0, false));
    }
    Ok(tensor)
}

/// Marks the capsule consumed and returns the owner that will call its deleter.
fn consume(
    raw: *mut ffi::PyObject,
    versioned: bool,
    managed: usize,
    ptr: usize,
    len: usize,
    writable: bool,
) -> DlpackOwner {
    let used = if versioned {
        NAME_USED_VERSIONED
    } else {
        NAME_USED_LEGACY
    };
    // SAFETY: `raw` is a valid capsule (checked by the caller); renaming transfers
    // ownership of the managed tensor to us, as the DLPack protocol specifies.
    unsafe { ffi::PyCapsule_SetName(raw, used.as_ptr()) };
    DlpackOwner {
        managed,
        versioned,
        ptr,
        len,
        writable,
    }
}
