//! The extension module `rtserve._core`: thin wrappers over `rtserve-core`
//! that convert types, map errors to Python classes, catch panics and release
//! the GIL around heavy work.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;

mod dlpack;
mod errors;
mod numpy_interop;
mod py_attention;
mod py_graph;
mod py_matmul;
mod py_ops;
mod py_runtime;
mod py_tensor;

use errors::{detached, guard};
use py_tensor::{parse_dtype, PyTensor};

/// Makes a Tensor from a numpy array (zero-copy when aligned), list, scalar or Tensor.
#[pyfunction]
#[pyo3(signature = (obj, dtype=None))]
fn tensor(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    dtype: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    guard(|| {
        let dtype = dtype.map(parse_dtype).transpose()?;
        let t = py_tensor::to_tensor(py, obj, dtype == Some(rtserve_core::DType::BF16))?;
        match dtype {
            Some(d) if d != t.dtype() => detached(py, move || t.cast(d)).map(PyTensor::new),
            _ => Ok(PyTensor::new(t)),
        }
    })
}

/// Imports a CPU tensor from any DLPack producer (numpy, torch, ...) without a copy.
#[pyfunction]
fn from_dlpack(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(PyTensor::new(t.get().inner.clone()));
    }
    guard(|| dlpack::import(py, obj).map(PyTensor::new))
}

type LoadedFile = (Vec<(String, PyTensor)>, BTreeMap<String, String>);

/// Maps one safetensors file: (tensors in data order, metadata).
#[pyfunction]
fn load_safetensors_file(py: Python<'_>, path: PathBuf) -> PyResult<LoadedFile> {
    let loaded = detached(py, move || rtserve_core::formats::safetensors::load(&path))?;
    Ok((
        loaded
            .tensors
            .into_iter()
            .map(|(n, t)| (n, PyTensor::new(t)))
            .collect(),
        loaded.metadata,
    ))
}

/// Writes tensors (name, Tensor) to one safetensors file.
#[pyfunction]
#[pyo3(signature = (tensors, path, metadata=None))]
fn save_safetensors_file(
    py: Python<'_>,
    tensors: Vec<(String, PyRef<'_, PyTensor>)>,
    path: PathBuf,
    metadata: Option<BTreeMap<String, String>>,
) -> PyResult<()> {
    let tensors: Vec<(String, rtserve_core::Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.inner.clone()))
        .collect();
    detached(py, move || {
        rtserve_core::formats::safetensors::save(&path, &tensors, metadata.as_ref())
    })
}

/// Panics inside Rust on purpose: tests check it becomes RtserveError.
#[pyfunction]
fn _debug_panic(py: Python<'_>, detach: bool) -> PyResult<()> {
    if detach {
        detached(py, || -> rtserve_core::Result<()> {
            panic!("deliberate panic (detached)")
        })
    } else {
        guard(|| -> PyResult<()> { panic!("deliberate panic") })
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Plugins register at import; one that cannot run here is listed as unavailable.
    rtserve_cuda::register();
    #[cfg(feature = "wgpu")]
    rtserve_wgpu::register();
    errors::register(m)?;
    m.add_class::<PyTensor>()?;
    m.add_function(wrap_pyfunction!(tensor, m)?)?;
    m.add_function(wrap_pyfunction!(from_dlpack, m)?)?;
    m.add_function(wrap_pyfunction!(load_safetensors_file, m)?)?;
    m.add_function(wrap_pyfunction!(save_safetensors_file, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    py_runtime::register(m)?;
    py_matmul::register(m)?;
    py_ops::register(m)?;
    py_attention::register(m)?;
    py_graph::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "DTYPES",
        rtserve_core::DType::ALL.map(|d| d.name()).to_vec(),
    )?;
    Ok(())
}
