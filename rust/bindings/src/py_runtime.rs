//! Runtime settings: the kernels' ISA tier and thread count.

use pyo3::prelude::*;
use rtserve_core::kernels::{self, dispatch, Isa};

use crate::errors::core;

/// The ISA tier kernels use now: "generic", "avx2" or "avx512".
#[pyfunction]
fn isa() -> &'static str {
    kernels::isa().name()
}

/// Switches the ISA tier (tests and benchmarks); raises UnsupportedError if the CPU lacks it.
#[pyfunction]
fn set_isa(name: &str) -> PyResult<()> {
    core(Isa::from_name(name).and_then(kernels::set_isa))
}

/// ISA tiers this CPU can run, slowest first.
#[pyfunction]
fn available_isas() -> Vec<&'static str> {
    dispatch::available().iter().map(|i| i.name()).collect()
}

/// CPU features the kernels use, as a dict of name -> bool.
#[pyfunction]
fn cpu_features() -> std::collections::BTreeMap<&'static str, bool> {
    let c = dispatch::cpu();
    std::collections::BTreeMap::from([
        ("avx2_fma", c.avx2_fma),
        ("avx512", c.avx512),
        ("avx512_bf16", c.avx512_bf16),
        ("avx512_vnni", c.avx512_vnni),
        ("f16c", c.f16c),
    ])
}

/// Threads the kernels called from this thread use (its own pool's, else the shared pool's).
#[pyfunction]
fn num_threads() -> usize {
    kernels::num_threads()
}

/// Sets the shared pool's thread count (replaces the pool).
#[pyfunction]
fn set_num_threads(threads: usize) -> PyResult<()> {
    core(kernels::set_num_threads(threads))
}

/// Gives the calling thread a pool of `threads` threads of its own for the kernels it calls
/// (1: the thread alone); None: back to the shared pool.
#[pyfunction]
#[pyo3(signature = (threads))]
fn set_local_threads(threads: Option<usize>) -> PyResult<()> {
    core(kernels::set_local_threads(threads))
}

/// The size of the calling thread's own pool, or None when it uses the shared pool.
#[pyfunction]
fn local_threads() -> Option<usize> {
    kernels::local_threads()
}

/// Frees the large freed buffers the runtime keeps for reuse (at most 64 MiB); returns the
/// bytes freed. The server calls it when its queues drain.
#[pyfunction]
fn release_memory() -> usize {
    rtserve_core::storage::release_cached_buffers()
}

/// Measured peak GFLOP/s on the current thread count: kind "f32" (FMA) or "bf16" (dot).
#[pyfunction]
#[pyo3(signature = (kind="f32", isa=None))]
fn peak_gflops(py: Python<'_>, kind: &str, isa: Option<&str>) -> PyResult<f64> {
    use rtserve_core::kernels::frame::peak::{self, PeakKind};
    let kind = match kind {
        "f32" => PeakKind::F32Fma,
        "bf16" => PeakKind::Bf16Dot,
        "i8" => PeakKind::I8Dot,
        other => {
            return Err(crate::errors::unsupported(format!(
                "peak_gflops: kind '{other}' is not supported (f32, bf16, i8)"
            )))
        }
    };
    let isa = match isa {
        Some(name) => core(Isa::from_name(name))?,
        None => kernels::isa(),
    };
    crate::errors::detached(py, move || peak::peak_gflops(kind, isa))
}

/// Devices this process knows: list of dicts with name, description, available.
#[pyfunction]
fn devices(py: Python<'_>) -> PyResult<Vec<Bound<'_, pyo3::types::PyDict>>> {
    rtserve_core::device::registry::devices()
        .into_iter()
        .map(|d| {
            let dict = pyo3::types::PyDict::new(py);
            dict.set_item("name", d.name)?;
            dict.set_item("description", d.description)?;
            dict.set_item("available", d.available)?;
            Ok(dict)
        })
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_function(wrap_pyfunction!(peak_gflops, m)?)?;
    m.add_function(wrap_pyfunction!(release_memory, m)?)?;
    m.add_function(wrap_pyfunction!(isa, m)?)?;
    m.add_function(wrap_pyfunction!(set_isa, m)?)?;
    m.add_function(wrap_pyfunction!(available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_local_threads, m)?)?;
    m.add_function(wrap_pyfunction!(local_threads, m)?)?;
    Ok(())
}
