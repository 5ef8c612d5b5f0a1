//! Python bindings of the matrix products: `rt.matmul` / `@`, `rt.linear`,
//! `rt.prepack` (weights packed once for repeated `linear` calls).

use pyo3::prelude::*;
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::ops::matmul::{self as mm, PackedWeight, Weight};

use crate::errors::{detached, unsupported};
use crate::py_tensor::{to_tensor, PyTensor};

/// Weights packed for this CPU's GEMM kernel, reusable across `rt.linear` calls.
#[pyclass(name = "PackedWeight", module = "rtserve", frozen)]
pub struct PyPackedWeight {
    inner: PackedWeight,
}

#[pymethods]
impl PyPackedWeight {
    /// (out_features, in_features)
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.inner.out_features, self.inner.in_features)
    }

    /// dtype of the source weights.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype.name()
    }

    /// Bytes of the packed copy.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.packed.nbytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "PackedWeight(shape=({}, {}), dtype={}, kernel={:?})",
            self.inner.out_features,
            self.inner.in_features,
            self.inner.dtype,
            self.inner.packed.kind
        )
    }
}

/// `a @ b` with numpy semantics (batched, broadcasting); a is f32, b f32/bf16/f16.
#[pyfunction]
fn matmul(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let a = to_tensor(py, a, false)?;
    let b = to_tensor(py, b, false)?;
    detached(py, move || mm::matmul(&a, &b)).map(PyTensor::new)
}

/// Packs weights [out_features, in_features] (f32/bf16/f16) once for `linear`.
#[pyfunction]
fn prepack(py: Python<'_>, weight: &Bound<'_, PyAny>) -> PyResult<PyPackedWeight> {
    let w = to_tensor(py, weight, false)?;
    detached(py, move || mm::prepack(&w)).map(|inner| PyPackedWeight { inner })
}

/// `act(x @ weight.T + bias) + residual` (HF nn.Linear layout), fused in one pass.
#[pyfunction]
#[pyo3(signature = (x, weight, bias=None, activation=None, residual=None))]
fn linear(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    activation: Option<&str>,
    residual: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let act = match activation {
        None => Activation::None,
        Some(name) => Activation::from_name(name).ok_or_else(|| {
            unsupported(format!(
                "linear: activation '{name}' is not supported (none, relu, gelu, gelu_tanh, silu)"
            ))
        })?,
    };
    let x = to_tensor(py, x, false)?;
    let bias = bias.map(|b| to_tensor(py, b, false)).transpose()?;
    let residual = residual.map(|r| to_tensor(py, r, false)).transpose()?;
    if let Ok(p) = weight.cast::<PyPackedWeight>() {
        let p = p.get().inner.clone();
        return detached(py, move || {
            mm::linear(
                &x,
                Weight::Packed(&p),
                bias.as_ref(),
                act,
                residual.as_ref(),
            )
        })
        .map(PyTensor::new);
    }
    let w = to_tensor(py, weight, false)?;
    detached(py, move || {
        mm::linear(
            &x,
            Weight::Tensor(&w),
            bias.as_ref(),
            act,
            residual.as_ref(),
        )
    })
    .map(PyTensor::new)
}

#[pymethods]
impl PyTensor {
    fn __matmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let a = self.inner.clone();
        let b = to_tensor(py, other, false)?;
        detached(py, move || mm::matmul(&a, &b)).map(PyTensor::new)
    }

    fn __rmatmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let a = to_tensor(py, other, false)?;
        let b = self.inner.clone();
        detached(py, move || mm::matmul(&a, &b)).map(PyTensor::new)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPackedWeight>()?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(prepack, m)?)?;
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    Ok(())
}
