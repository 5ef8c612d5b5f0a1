//! Python exception classes and the mapping from the core's `Error` to them.
//! Every entry point runs through [`guard`] so that a Rust panic surfaces as
//! `RtserveError("internal error, please report: ...")`, never as pyo3's
//! `PanicException` and never as an abort.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyIndexError, PyMemoryError, PyNotImplementedError,
    PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use rtserve_core::Error;

/// The exception classes, created once at import.
pub struct Classes {
    pub base: Py<PyType>,
    pub shape: Py<PyType>,
    pub dtype: Py<PyType>,
    pub weights: Py<PyType>,
    pub device: Py<PyType>,
    pub out_of_memory: Py<PyType>,
    pub unsupported: Py<PyType>,
    pub cancelled: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[Bound<'py, PyType>],
    doc: &str,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "rtserve")?;
    namespace.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let cls = py
        .get_type::<PyType>()
        .call1((name, bases, namespace))?
        .cast_into::<PyType>()?;
    Ok(cls.unbind())
}

pub fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let base = make_class(
            py,
            "RtserveError",
            &[py.get_type::<PyException>()],
            "Base class of every error raised by rtserve.",
        )?;
        let b = base.bind(py).clone();
        let sub = |name: &str, builtin: Bound<'_, PyType>, doc: &str| {
            make_class(py, name, &[b.clone(), builtin], doc)
        };
        Ok(Classes {
            shape: sub(
                "ShapeError",
                py.get_type::<PyValueError>(),
                "Shapes that do not fit an operation.",
            )?,
            dtype: sub(
                "DTypeError",
                py.get_type::<PyTypeError>(),
                "A dtype an operation cannot take.",
            )?,
            weights: sub(
                "WeightsError",
                py.get_type::<PyValueError>(),
                "A malformed or inconsistent weights file.",
            )?,
            device: sub(
                "DeviceError",
                py.get_type::<PyRuntimeError>(),
                "A device could not do what was asked.",
            )?,
            out_of_memory: sub(
                "OutOfMemoryError",
                py.get_type::<PyMemoryError>(),
                "An allocation failed.",
            )?,
            unsupported: sub(
                "UnsupportedError",
                py.get_type::<PyNotImplementedError>(),
                "A valid request this version does not implement.",
            )?,
            cancelled: sub(
                "CancelledError",
                py.get_type::<PyRuntimeError>(),
                "A run was cancelled or passed its deadline.",
            )?,
            base,
        })
    })
}

fn raise(py: Python<'_>, cls: &Py<PyType>, msg: String) -> PyErr {
    PyErr::from_type(cls.bind(py).clone(), msg)
}

/// Converts a core error into the matching Python exception.
pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let msg = err.to_string();
        let c = match classes(py) {
            Ok(c) => c,
            Err(e) => return e,
        };
        match err {
            Error::Shape { .. } => raise(py, &c.shape, msg),
            Error::DType { .. } => raise(py, &c.dtype, msg),
            Error::Weights { .. } => raise(py, &c.weights, msg),
            Error::Index { .. } => PyIndexError::new_err(msg),
            Error::Device { .. } => raise(py, &c.device, msg),
            Error::OutOfMemory { .. } => raise(py, &c.out_of_memory, msg),
            Error::Unsupported(_) => raise(py, &c.unsupported, msg),
            Error::Cancelled(_) => raise(py, &c.cancelled, msg),
            Error::Internal(_) => raise(py, &c.base, msg),
            Error::Io { ref source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                _ => PyOSError::new_err(msg),
            },
        }
    })
}

/// Raises one of rtserve's classes with a message built here (not from a core error).
pub fn unsupported(msg: impl Into<String>) -> PyErr {
    Python::attach(|py| match classes(py) {
        Ok(c) => raise(py, &c.unsupported, msg.into()),
        Err(e) => e,
    })
}

pub fn dtype_error(msg: impl Into<String>) -> PyErr {
    Python::attach(|py| match classes(py) {
        Ok(c) => raise(py, &c.dtype, msg.into()),
        Err(e) => e,
    })
}

pub fn device_error(msg: impl Into<String>) -> PyErr {
    Python::attach(|py| match classes(py) {
        Ok(c) => raise(py, &c.device, msg.into()),
        Err(e) => e,
    })
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

fn internal(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    to_py(Error::Internal(panic_message(payload)))
}

/// Runs a binding body, turning a panic into `RtserveError`.
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(internal(p)))
}

/// Runs core work with the GIL released, mapping errors and panics.
pub fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> rtserve_core::Result<T> + Send,
) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(to_py),
        Err(payload) => Err(internal(payload)),
    }
}

/// Maps a core result (for calls cheap enough to keep the GIL).
pub fn core<T>(r: rtserve_core::Result<T>) -> PyResult<T> {
    r.map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let c = classes(py)?;
    for (name, cls) in [
        ("RtserveError", &c.base),
        ("ShapeError", &c.shape),
        ("DTypeError", &c.dtype),
        ("WeightsError", &c.weights),
        ("DeviceError", &c.device),
        ("OutOfMemoryError", &c.out_of_memory),
        ("UnsupportedError", &c.unsupported),
        ("CancelledError", &c.cancelled),
    ] {
        m.add(name, cls.bind(py))?;
    }
    Ok(())
}
