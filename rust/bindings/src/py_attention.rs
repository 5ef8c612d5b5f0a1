//! Python binding of the fused attention (rtserve-core `ops::attention`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rtserve_core::ops::attention::{attention as core_attention, AttentionOptions};

use crate::errors::{detached, guard};
use crate::py_tensor::{to_tensor, PyTensor};

/// softmax(q kᵀ · scale + mask) v, fused (memory O(seq), never O(seq²)).
///
/// q [batch, seq_q, heads_q, head_dim], k [batch, seq_k, heads_kv, head_dim],
/// v [batch, seq_k, heads_kv, head_dim_v] (rt.Tensor or numpy, any strides;
/// f32, f16 or bf16); heads_q a multiple of heads_kv (grouped-query attention).
/// `causal` is bottom-right aligned (query i sees key j iff j <= i + seq_k - seq_q);
/// `scale` defaults to 1/sqrt(head_dim); `mask` is [batch, seq_k], bool or integer,
/// nonzero = attend. `segments` packs sequences of different lengths into one
/// (FlashAttention's `cu_seqlens`): integer offsets [n + 1] from 0 to seq, with batch 1
/// and seq_q == seq_k; rows o[s]..o[s+1] attend only each other. `k_append`/`v_append`
/// ([batch, n, heads_kv, head_dim(_v)], given together) are keys and values after k and v
/// along seq, read in place (a decoder's new tokens beside its cache); `mask` covers k
/// only and causal alignment counts them. Returns f32 [batch, seq_q, heads_q, head_dim_v];
/// rows that may attend no key are zeros. Releases the GIL.
#[pyfunction]
#[pyo3(signature = (q, k, v, *, causal=false, scale=None, mask=None, segments=None, k_append=None, v_append=None))]
#[allow(clippy::too_many_arguments)]
fn attention(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    causal: bool,
    scale: Option<f32>,
    mask: Option<&Bound<'_, PyAny>>,
    segments: Option<&Bound<'_, PyAny>>,
    k_append: Option<&Bound<'_, PyAny>>,
    v_append: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    guard(|| {
        let append = match (k_append, v_append) {
            (Some(ka), Some(va)) => Some((to_tensor(py, ka, false)?, to_tensor(py, va, false)?)),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "attention: k_append and v_append go together (give both or neither)",
                ))
            }
        };
        let (q, k, v) = (
            to_tensor(py, q, false)?,
            to_tensor(py, k, false)?,
            to_tensor(py, v, false)?,
        );
        let opts = AttentionOptions {
            causal,
            scale,
            key_padding_mask: mask.map(|m| to_tensor(py, m, false)).transpose()?,
            segments: segments.map(|s| to_tensor(py, s, false)).transpose()?,
            append,
        };
        detached(py, move || core_attention(&q, &k, &v, &opts)).map(PyTensor::new)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    Ok(())
}
