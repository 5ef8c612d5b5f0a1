//! Eager ops (`rt.add`, `rt.softmax`, ...) and the arithmetic operators and
//! reduction methods of `rt.Tensor`. Arguments take an `rt.Tensor` or anything
//! `rt.tensor` accepts; a Python scalar next to a tensor takes the tensor's
//! dtype. Every call runs the core with the GIL released (panics caught).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};
use rtserve_core::kernels::generic::elementwise::{Binary, Unary};
use rtserve_core::ops::{self, rope::RopeOptions};
use rtserve_core::{DType, Tensor};

use crate::errors::{core, detached, dtype_error, guard};
use crate::py_tensor::{parse_dtype, to_tensor, PyTensor};

fn is_py_scalar(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>()
}

/// A Python scalar as a 0-d tensor of `dtype`.
fn scalar_tensor(op: &str, obj: &Bound<'_, PyAny>, dtype: DType) -> PyResult<Tensor> {
    let is_float = obj.is_instance_of::<PyFloat>();
    if is_float && !dtype.is_float() && dtype != DType::Bool {
        return Err(dtype_error(format!(
            "{op}: a float scalar cannot combine with a {dtype} tensor without promotion; cast the tensor first"
        )));
    }
    let t = if obj.is_instance_of::<PyBool>() {
        Tensor::from_slice(&[obj.extract::<bool>()? as i64], &[])
    } else if is_float {
        Tensor::from_slice(&[obj.extract::<f64>()?], &[])
    } else {
        match obj.extract::<i64>() {
            Ok(v) => Tensor::from_slice(&[v], &[]),
            Err(_) => Tensor::from_slice(&[obj.extract::<f64>()?], &[]),
        }
    };
    core(t.and_then(|t| t.cast(dtype)))
}

/// Two operands, a Python scalar taking the other side's dtype.
fn operands(
    py: Python<'_>,
    op: &str,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<(Tensor, Tensor)> {
    match (is_py_scalar(a), is_py_scalar(b)) {
        (true, false) => {
            let tb = to_tensor(py, b, false)?;
            Ok((scalar_tensor(op, a, tb.dtype())?, tb))
        }
        (false, true) => {
            let ta = to_tensor(py, a, false)?;
            let tb = scalar_tensor(op, b, ta.dtype())?;
            Ok((ta, tb))
        }
        _ => Ok((to_tensor(py, a, false)?, to_tensor(py, b, false)?)),
    }
}

fn binary_op(
    py: Python<'_>,
    op: Binary,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    guard(|| {
        let (a, b) = operands(py, op.name(), a, b)?;
        detached(py, move || ops::binary::binary(op, &a, &b)).map(PyTensor::new)
    })
}

fn unary_op(py: Python<'_>, op: Unary, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        detached(py, move || ops::unary::unary(op, &x)).map(PyTensor::new)
    })
}

macro_rules! binary_fns {
    ($($name:ident => $op:ident : $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[pyfunction]
        fn $name(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
            binary_op(py, Binary::$op, a, b)
        }
    )*};
}

binary_fns!(
    add => Add: "a + b with numpy broadcasting (same dtype; a Python scalar takes the tensor's).",
    sub => Sub: "a - b with broadcasting.",
    mul => Mul: "a * b with broadcasting.",
    div => Div: "a / b with broadcasting (float dtypes).",
    maximum => Max: "Elementwise maximum with broadcasting; NaN propagates.",
    minimum => Min: "Elementwise minimum with broadcasting; NaN propagates.",
    pow => Pow: "a ** b with broadcasting (float dtypes).",
);

macro_rules! unary_fns {
    ($($name:ident => $op:ident : $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[pyfunction]
        fn $name(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
            unary_op(py, Unary::$op, x)
        }
    )*};
}

unary_fns!(
    exp => Exp: "e**x elementwise.",
    log => Log: "Natural logarithm elementwise.",
    tanh => Tanh: "Hyperbolic tangent elementwise.",
    erf => Erf: "The error function elementwise.",
    gelu => Gelu: "GELU, erf form: x * Phi(x).",
    gelu_tanh => GeluTanh: "GELU, tanh approximation.",
    silu => Silu: "SiLU (swish): x * sigmoid(x).",
    relu => Relu: "max(x, 0) elementwise (floats and ints; NaN propagates).",
    sigmoid => Sigmoid: "1 / (1 + exp(-x)) elementwise.",
    sqrt => Sqrt: "Square root elementwise.",
    rsqrt => Rsqrt: "1 / sqrt(x) elementwise.",
    neg => Neg: "-x elementwise (floats and ints).",
    abs => Abs: "|x| elementwise (floats and ints).",
);

type ReduceFn = fn(&Tensor, Option<isize>, bool) -> rtserve_core::Result<Tensor>;

fn reduce_op(
    py: Python<'_>,
    f: ReduceFn,
    x: &Bound<'_, PyAny>,
    axis: Option<isize>,
    keepdims: bool,
) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        detached(py, move || f(&x, axis, keepdims)).map(PyTensor::new)
    })
}

macro_rules! reduce_fns {
    ($($name:ident : $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[pyfunction]
        #[pyo3(signature = (x, axis=None, keepdims=false))]
        fn $name(
            py: Python<'_>,
            x: &Bound<'_, PyAny>,
            axis: Option<isize>,
            keepdims: bool,
        ) -> PyResult<PyTensor> {
            reduce_op(py, ops::reduce::$name, x, axis, keepdims)
        }
    )*};
}

reduce_fns!(
    sum: "Sum over axis (None: all elements); integers and bool sum to i64.",
    mean: "Mean over axis (None: all elements); NaN for an empty axis.",
    max: "Maximum over axis (None: all elements); NaN propagates.",
    min: "Minimum over axis (None: all elements); NaN propagates.",
    argmax: "Index (i64) of the first maximum over axis (None: of the flattened tensor).",
);

/// Softmax over `axis`, stable; a fully -inf slice gives zeros.
#[pyfunction]
#[pyo3(signature = (x, axis=-1))]
fn softmax(py: Python<'_>, x: &Bound<'_, PyAny>, axis: isize) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        detached(py, move || ops::softmax::softmax(&x, axis)).map(PyTensor::new)
    })
}

/// log(softmax(x)) over `axis`, stable; a fully -inf slice gives -inf.
#[pyfunction]
#[pyo3(signature = (x, axis=-1))]
fn log_softmax(py: Python<'_>, x: &Bound<'_, PyAny>, axis: isize) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        detached(py, move || ops::softmax::log_softmax(&x, axis)).map(PyTensor::new)
    })
}

fn opt_tensor(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Tensor>> {
    obj.filter(|o| !o.is_none())
        .map(|o| to_tensor(py, o, false))
        .transpose()
}

/// Layer normalization over the last dimension.
#[pyfunction]
#[pyo3(signature = (x, weight=None, bias=None, eps=1e-5))]
fn layer_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>,
    eps: f64,
) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        let (w, b) = (opt_tensor(py, weight)?, opt_tensor(py, bias)?);
        detached(py, move || {
            ops::norm::layer_norm(&x, w.as_ref(), b.as_ref(), eps)
        })
        .map(PyTensor::new)
    })
}

/// RMS normalization over the last dimension (Hugging Face Llama).
#[pyfunction]
#[pyo3(signature = (x, weight=None, eps=1e-6))]
fn rms_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    eps: f64,
) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        let w = opt_tensor(py, weight)?;
        detached(py, move || ops::norm::rms_norm(&x, w.as_ref(), eps)).map(PyTensor::new)
    })
}

/// Rotary position embedding of x [batch, seq, heads, head_dim].
#[pyfunction]
#[pyo3(signature = (x, positions=None, offset=0, theta=10000.0, interleaved=false, inv_freq=None, rotary_dim=None))]
#[allow(clippy::too_many_arguments)]
fn rope(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    positions: Option<&Bound<'_, PyAny>>,
    offset: i64,
    theta: f64,
    interleaved: bool,
    inv_freq: Option<&Bound<'_, PyAny>>,
    rotary_dim: Option<usize>,
) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        let positions = opt_tensor(py, positions)?;
        let inv_freq = opt_tensor(py, inv_freq)?;
        detached(py, move || {
            let opts = RopeOptions {
                positions: positions.as_ref(),
                offset,
                theta,
                interleaved,
                inv_freq: inv_freq.as_ref(),
                rotary_dim,
            };
            ops::rope::rope(&x, &opts)
        })
        .map(PyTensor::new)
    })
}

/// Rows of `weight` [vocab, dim] picked by integer `ids`: shape [*ids.shape, dim].
#[pyfunction]
fn embedding(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    ids: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    guard(|| {
        let w = to_tensor(py, weight, false)?;
        let ids = to_tensor(py, ids, false)?;
        detached(py, move || ops::gather::embedding(&w, &ids)).map(PyTensor::new)
    })
}

/// Joins tensors along `axis` (same dtype; equal sizes elsewhere).
#[pyfunction]
#[pyo3(signature = (tensors, axis=0))]
fn concat(py: Python<'_>, tensors: &Bound<'_, PyAny>, axis: isize) -> PyResult<PyTensor> {
    guard(|| {
        let list = tensors
            .try_iter()
            .map_err(|_| PyTypeError::new_err("concat: tensors must be a sequence of tensors"))?
            .map(|t| to_tensor(py, &t?, false))
            .collect::<PyResult<Vec<_>>>()?;
        detached(py, move || ops::concat::concat(&list, axis)).map(PyTensor::new)
    })
}

/// `cond ? a : b` elementwise with broadcasting (cond bool; a Python scalar takes the other's dtype).
#[pyfunction]
#[pyo3(name = "where")]
fn where_(
    py: Python<'_>,
    cond: &Bound<'_, PyAny>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    guard(|| {
        let cond = to_tensor(py, cond, false)?;
        let (a, b) = operands(py, "where", a, b)?;
        detached(py, move || ops::select::where_(&cond, &a, &b)).map(PyTensor::new)
    })
}

/// `x` with `value` where the bool `mask` (broadcast to x) is true.
#[pyfunction]
fn masked_fill(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mask: &Bound<'_, PyAny>,
    value: f64,
) -> PyResult<PyTensor> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        let mask = to_tensor(py, mask, false)?;
        detached(py, move || ops::select::masked_fill(&x, &mask, value)).map(PyTensor::new)
    })
}

/// The k largest (or smallest) entries along `axis`, sorted: (values, i64 indices).
#[pyfunction]
#[pyo3(signature = (x, k, axis=-1, largest=true))]
fn topk(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    k: usize,
    axis: isize,
    largest: bool,
) -> PyResult<(PyTensor, PyTensor)> {
    guard(|| {
        let x = to_tensor(py, x, false)?;
        let (v, i) = detached(py, move || ops::topk::topk(&x, k, axis, largest))?;
        Ok((PyTensor::new(v), PyTensor::new(i)))
    })
}

/// A converted copy of x (same as `x.astype(dtype)`).
#[pyfunction]
fn cast(py: Python<'_>, x: &Bound<'_, PyAny>, dtype: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    guard(|| {
        let dtype = parse_dtype(dtype)?;
        let x = to_tensor(py, x, false)?;
        detached(py, move || x.cast(dtype)).map(PyTensor::new)
    })
}

/// Whether an operator should handle `other` (else it returns NotImplemented).
fn operator_operand(py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(other.cast::<PyTensor>().is_ok()
        || is_py_scalar(other)
        || other.is_instance(&py.import("numpy")?.getattr("ndarray")?)?)
}

impl PyTensor {
    fn operator(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: Binary,
        reflected: bool,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if !operator_operand(py, other)? {
            return Ok(py.NotImplemented());
        }
        let this = slf.as_any();
        let t = if reflected {
            binary_op(py, op, other, this)?
        } else {
            binary_op(py, op, this, other)?
        };
        Ok(Bound::new(py, t)?.into_any().unbind())
    }
}

#[pymethods]
impl PyTensor {
    fn __add__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Add, false)
    }
    fn __radd__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Add, true)
    }
    fn __sub__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Sub, false)
    }
    fn __rsub__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Sub, true)
    }
    fn __mul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Mul, false)
    }
    fn __rmul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Mul, true)
    }
    fn __truediv__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Div, false)
    }
    fn __rtruediv__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::operator(slf, other, Binary::Div, true)
    }
    fn __pow__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        modulo: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        if !modulo.is_none() {
            return Ok(slf.py().NotImplemented());
        }
        Self::operator(slf, other, Binary::Pow, false)
    }
    fn __rpow__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        modulo: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        if !modulo.is_none() {
            return Ok(slf.py().NotImplemented());
        }
        Self::operator(slf, other, Binary::Pow, true)
    }
    fn __neg__(slf: &Bound<'_, Self>) -> PyResult<PyTensor> {
        unary_op(slf.py(), Unary::Neg, slf.as_any())
    }
    fn __abs__(slf: &Bound<'_, Self>) -> PyResult<PyTensor> {
        unary_op(slf.py(), Unary::Abs, slf.as_any())
    }

    /// Sum over axis (None: all elements).
    #[pyo3(name = "sum", signature = (axis=None, keepdims=false))]
    fn sum_method(
        slf: &Bound<'_, Self>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyTensor> {
        reduce_op(slf.py(), ops::reduce::sum, slf.as_any(), axis, keepdims)
    }
    /// Mean over axis (None: all elements).
    #[pyo3(name = "mean", signature = (axis=None, keepdims=false))]
    fn mean_method(
        slf: &Bound<'_, Self>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyTensor> {
        reduce_op(slf.py(), ops::reduce::mean, slf.as_any(), axis, keepdims)
    }
    /// Maximum over axis (None: all elements).
    #[pyo3(name = "max", signature = (axis=None, keepdims=false))]
    fn max_method(
        slf: &Bound<'_, Self>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyTensor> {
        reduce_op(slf.py(), ops::reduce::max, slf.as_any(), axis, keepdims)
    }
    /// Minimum over axis (None: all elements).
    #[pyo3(name = "min", signature = (axis=None, keepdims=false))]
    fn min_method(
        slf: &Bound<'_, Self>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyTensor> {
        reduce_op(slf.py(), ops::reduce::min, slf.as_any(), axis, keepdims)
    }
    /// Index of the first maximum over axis (None: flattened).
    #[pyo3(name = "argmax", signature = (axis=None, keepdims=false))]
    fn argmax_method(
        slf: &Bound<'_, Self>,
        axis: Option<isize>,
        keepdims: bool,
    ) -> PyResult<PyTensor> {
        reduce_op(slf.py(), ops::reduce::argmax, slf.as_any(), axis, keepdims)
    }
    /// Softmax over axis.
    #[pyo3(name = "softmax", signature = (axis=-1))]
    fn softmax_method(slf: &Bound<'_, Self>, axis: isize) -> PyResult<PyTensor> {
        softmax(slf.py(), slf.as_any(), axis)
    }
    /// e**x elementwise.
    #[pyo3(name = "exp")]
    fn exp_method(slf: &Bound<'_, Self>) -> PyResult<PyTensor> {
        unary_op(slf.py(), Unary::Exp, slf.as_any())
    }
    /// Natural logarithm elementwise.
    #[pyo3(name = "log")]
    fn log_method(slf: &Bound<'_, Self>) -> PyResult<PyTensor> {
        unary_op(slf.py(), Unary::Log, slf.as_any())
    }
    /// Square root elementwise.
    #[pyo3(name = "sqrt")]
    fn sqrt_method(slf: &Bound<'_, Self>) -> PyResult<PyTensor> {
        unary_op(slf.py(), Unary::Sqrt, slf.as_any())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    macro_rules! add {
        ($($f:ident),* $(,)?) => {$( m.add_function(wrap_pyfunction!($f, m)?)?; )*};
    }
    add!(
        add,
        sub,
        mul,
        div,
        maximum,
        minimum,
        pow,
        exp,
        log,
        tanh,
        erf,
        gelu,
        gelu_tanh,
        silu,
        relu,
        sigmoid,
        sqrt,
        rsqrt,
        neg,
        abs,
        sum,
        mean,
        max,
        min,
        argmax,
        softmax,
        log_softmax,
        layer_norm,
        rms_norm,
        rope,
        embedding,
        concat,
        where_,
        masked_fill,
        topk,
        cast,
    );
    Ok(())
}
