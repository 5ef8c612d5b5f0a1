//! `linear`'s GEMM on cuBLASLt, with what its epilogue can do fused into the
//! product: the bias, ReLU, the tanh form of GELU, and (with no activation)
//! the residual as cuBLASLt's `C` operand (`D = x·Wᵀ + residual + bias`).
//! What it cannot do (erf GELU, SiLU, a residual after an activation) is left
//! to the epilogue kernel, which gemm.rs runs after the product.
//!
//! cuBLASLt is optional: where libcublasLt is missing, its handle cannot be
//! made, or it finds no algorithm for a problem, gemm.rs uses cuBLAS GemmEx
//! and the kernel for the whole epilogue. Products use the f32 compute type
//! (no TF32), as the GemmEx path does.
//!
//! cuBLASLt documents its GELU epilogue as "GELU" without saying which form;
//! PyTorch relies on it being the tanh approximation. [`Lt::check_epilogues`]
//! checks that on the GPU once (a product through the identity, so the epilogue
//! is all that is measured) and fuses `GeluTanh` only where cuBLASLt's values
//! are within 1e-5 of the tanh formula (4.5e-6 with CUDA 13.0 on an H200; erf
//! GELU would be 4e-4 away); otherwise that activation stays a kernel.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys::{
    cublasComputeType_t, cublasLtEpilogue_t, cublasLtHandle_t, cublasLtMatmulAlgo_t,
    cublasLtMatmulDescAttributes_t as DescAttr, cublasLtMatmulDesc_t,
    cublasLtMatmulPreferenceAttributes_t as PrefAttr, cublasLtMatmulPreference_t,
    cublasLtMatrixLayout_t, cudaDataType_t,
};
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::DType;

use crate::gpu::{Gpu, GpuBuffer};

/// cublasOperation_t's values (an int32 attribute; cudarc's cuBLASLt module has no type for it).
const OP_N: i32 = 0;
const OP_T: i32 = 1;

/// cuBLASLt's handle; destroyed on drop.
struct Handle(cublasLtHandle_t);

// SAFETY: a cuBLASLt handle may be used from any thread; rtserve uses it only
// while holding the GPU's lock (runs queue work one at a time), so it is never
// used by two threads at once.
unsafe impl Send for Handle {}
// SAFETY: as above: every use is serialized by the GPU's lock.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from cublasLtCreate and is destroyed once, here.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

/// The element type of a GEMM operand in cuBLASLt's terms.
pub fn data_type(d: DType) -> Option<cudaDataType_t> {
    match d {
        DType::F32 => Some(cudaDataType_t::CUDA_R_32F),
        DType::BF16 => Some(cudaDataType_t::CUDA_R_16BF),
        DType::F16 => Some(cudaDataType_t::CUDA_R_16F),
        _ => None,
    }
}

/// What the product's epilogue computed; the epilogue kernel does the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fused {
    pub bias: bool,
    pub activation: bool,
    pub residual: bool,
}

/// One `out[rows, n] = act(x[rows, k] · w[n, k]ᵀ + bias) + residual`, row-major,
/// with `x` already in `w`'s type and `out`, `bias`, `residual` f32 (device addresses).
pub struct LinearProblem {
    pub dtype: DType,
    pub rows: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    pub out: u64,
    pub bias: Option<u64>,
    pub residual: Option<u64>,
    pub activation: Activation,
}

/// What the choice of algorithm depends on.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AlgoKey {
    dtype: DType,
    rows: usize,
    n: usize,
    k: usize,
    epilogue: cublasLtEpilogue_t,
    with_c: bool,
    align: [u32; 4],
}

pub struct Lt {
    handle: Handle,
    workspace: GpuBuffer,
    stream: cudarc::cublaslt::sys::cudaStream_t,
    /// cuBLASLt's GELU epilogue agreed with the tanh formula on this GPU.
    gelu_tanh: bool,
    /// The heuristic's pick per problem (None: no algorithm, use GemmEx).
    algos: Mutex<HashMap<AlgoKey, Option<cublasLtMatmulAlgo_t>>>,
}

// SAFETY: `stream` is the GPU's one stream, alive as long as the Gpu that owns
// this; the handle is Send + Sync above and the algorithm cache is a Mutex.
unsafe impl Send for Lt {}
// SAFETY: as above.
unsafe impl Sync for Lt {}

/// Alignment in bytes (a power of two, at most 256) of a device address.
fn alignment(address: u64) -> u32 {
    if address == 0 {
        256
    } else {
        (1u64 << address.trailing_zeros().min(8)) as u32
    }
}

/// Frees cuBLASLt descriptors when a product is done (or failed).
enum Descriptor {
    Matmul(cublasLtMatmulDesc_t),
    Layout(cublasLtMatrixLayout_t),
    Preference(cublasLtMatmulPreference_t),
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by cuBLASLt and is destroyed once, here.
        let _ = unsafe {
            match *self {
                Descriptor::Matmul(d) => lt::destroy_matmul_desc(d),
                Descriptor::Layout(d) => lt::destroy_matrix_layout(d),
                Descriptor::Preference(d) => lt::destroy_matmul_pref(d),
            }
        };
    }
}

fn set_desc<T>(desc: cublasLtMatmulDesc_t, attr: DescAttr, value: &T) -> Result<(), String> {
    // SAFETY: `desc` is a live descriptor; `value` points at a T of the size passed,
    // and T is the type cuBLASLt documents for `attr` (each call site below).
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }
    .map_err(|e| format!("cublasLtMatmulDescSetAttribute({attr:?}): {e}"))
}

fn set_pref<T>(pref: cublasLtMatmulPreference_t, attr: PrefAttr, value: &T) -> Result<(), String> {
    // SAFETY: as in `set_desc`, for a preference descriptor.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            attr,
            value as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }
    .map_err(|e| format!("cublasLtMatmulPreferenceSetAttribute({attr:?}): {e}"))
}

/// The epilogue for an activation and bias, if cuBLASLt has it (and, for the
/// tanh GELU, if its values matched ours on this GPU).
fn epilogue(activation: Activation, bias: bool, gelu_tanh: bool) -> Option<cublasLtEpilogue_t> {
    use cublasLtEpilogue_t::*;
    Some(match (activation, bias) {
        (Activation::None, false) => CUBLASLT_EPILOGUE_DEFAULT,
        (Activation::None, true) => CUBLASLT_EPILOGUE_BIAS,
        (Activation::Relu, false) => CUBLASLT_EPILOGUE_RELU,
        (Activation::Relu, true) => CUBLASLT_EPILOGUE_RELU_BIAS,
        (Activation::GeluTanh, false) if gelu_tanh => CUBLASLT_EPILOGUE_GELU,
        (Activation::GeluTanh, true) if gelu_tanh => CUBLASLT_EPILOGUE_GELU_BIAS,
        _ => return None,
    })
}

impl Lt {
    /// A cuBLASLt handle and a workspace on `gpu`'s stream, or why there is none.
    /// GeluTanh is not fused until [`Lt::check_epilogues`] says so.
    pub fn open(gpu: &Gpu, compute_major: i32) -> Result<Lt, String> {
        // SAFETY: only dlopen()s the library under its usual names; no symbol is called.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err("libcublasLt.so.13 not found".to_owned());
        }
        // cudarc panics on a missing symbol: that becomes the reason too.
        let handle = std::panic::catch_unwind(lt::create_handle)
            .map_err(|_| "cuBLASLt is missing a symbol".to_owned())?
            .map_err(|e| format!("cublasLtCreate: {e}"))?;
        let handle = Handle(handle);
        // NVIDIA's advice: 32 MiB of workspace on Hopper and newer, 4 MiB before.
        let bytes = if compute_major >= 9 {
            32 << 20
        } else {
            4 << 20
        };
        let workspace = gpu
            .alloc(bytes)
            .map_err(|e| format!("cuBLASLt workspace: {e}"))?;
        Ok(Lt {
            handle,
            workspace,
            stream: gpu.stream.cu_stream() as cudarc::cublaslt::sys::cudaStream_t,
            gelu_tanh: false,
            algos: Mutex::new(HashMap::new()),
        })
    }

    /// Runs the epilogues once through an identity weight, where the product
    /// is exact and the epilogue alone shapes the result: bias and ReLU must be
    /// exact (else cuBLASLt is not used at all); GELU is fused for `GeluTanh`
    /// when it is within 1e-5 (relative, plus 1e-5 absolute) of the tanh formula
    /// in f64. Returns what is fused, in words.
    pub fn check_epilogues(&mut self, gpu: &Gpu) -> Result<String, String> {
        use cublasLtEpilogue_t::*;
        const N: usize = 256;
        const ROWS: usize = 4;
        let x: Vec<f32> = (0..ROWS * N)
            .map(|i| -8.0 + 16.0 * i as f32 / (ROWS * N - 1) as f32)
            .collect();
        let bias: Vec<f32> = (0..N).map(|j| (j as f32 * 0.37).sin() * 0.5).collect();
        let identity: Vec<f32> = (0..N * N)
            .map(|i| if i / N == i % N { 1.0 } else { 0.0 })
            .collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        let fail = |e: rtserve_core::Error| e.to_string();
        let (x_d, w_d, b_d) = (
            gpu.upload(&bytes(&x)).map_err(fail)?,
            gpu.upload(&bytes(&identity)).map_err(fail)?,
            gpu.upload(&bytes(&bias)).map_err(fail)?,
        );
        let out = gpu.alloc(ROWS * N * 4).map_err(fail)?;
        let sums: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % N]).collect();
        let run = |epilogue: cublasLtEpilogue_t| -> Result<Vec<f32>, String> {
            let p = LinearProblem {
                dtype: DType::F32,
                rows: ROWS,
                n: N,
                k: N,
                x: x_d.address,
                w: w_d.address,
                out: out.address,
                bias: Some(b_d.address),
                residual: None,
                activation: Activation::None,
            };
            let fused = Fused {
                bias: true,
                activation: false,
                residual: false,
            };
            if !self.product(&p, epilogue, fused)? {
                return Err(format!("no cuBLASLt algorithm for {epilogue:?} in f32"));
            }
            let mut got = vec![0u8; ROWS * N * 4];
            gpu.download(out.address, &mut got).map_err(fail)?;
            Ok(got
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let exact = |got: &[f32], want: &dyn Fn(f32) -> f32, what: &str| -> Result<(), String> {
            match got.iter().zip(&sums).find(|(g, s)| **g != want(**s)) {
                Some((g, s)) => Err(format!(
                    "cuBLASLt's {what} epilogue gave {g} for {s}, not {}",
                    want(*s)
                )),
                None => Ok(()),
            }
        };
        exact(&run(CUBLASLT_EPILOGUE_BIAS)?, &|s| s, "bias")?;
        exact(&run(CUBLASLT_EPILOGUE_RELU_BIAS)?, &|s| s.max(0.0), "ReLU")?;
        let gelu = match run(CUBLASLT_EPILOGUE_GELU_BIAS) {
            Ok(got) => got,
            Err(why) => return Ok(format!("bias, ReLU, residual; GELU not fused: {why}")),
        };
        let worst = got_vs_tanh_gelu(&gelu, &sums);
        self.gelu_tanh = worst <= 1e-5;
        Ok(if self.gelu_tanh {
            format!("bias, ReLU, tanh GELU (within {worst:.1e} of the tanh formula), residual")
        } else {
            format!(
                "bias, ReLU, residual; tanh GELU left to the kernel: cuBLASLt's GELU is {worst:.1e} from the tanh formula"
            )
        })
    }

    /// What the epilogue will fuse for this problem, or None if cuBLASLt cannot
    /// run it at all (unsupported dtype).
    pub fn plan(&self, p: &LinearProblem) -> Option<(cublasLtEpilogue_t, Fused)> {
        data_type(p.dtype)?;
        if let Some(e) = epilogue(p.activation, p.bias.is_some(), self.gelu_tanh) {
            let activation = p.activation != Activation::None;
            // C = residual only when no activation follows the sum (D = act(AB + C + bias)).
            let residual = p.residual.is_some() && !activation;
            let fused = Fused {
                bias: p.bias.is_some(),
                activation,
                residual,
            };
            return Some((e, fused));
        }
        // An activation cuBLASLt lacks: fuse the bias, the kernel does the rest.
        let e = epilogue(Activation::None, p.bias.is_some(), false)?;
        Some((
            e,
            Fused {
                bias: p.bias.is_some(),
                activation: false,
                residual: false,
            },
        ))
    }

    /// Queues the product with the epilogue of [`Lt::plan`] on the stream. Ok(None):
    /// cuBLASLt has no algorithm for it (nothing was queued; use GemmEx).
    pub fn linear(&self, p: &LinearProblem) -> Result<Option<Fused>, String> {
        let Some((epilogue, fused)) = self.plan(p) else {
            return Ok(None);
        };
        Ok(self.product(p, epilogue, fused)?.then_some(fused))
    }

    /// Queues `p` with `epilogue`, which computes what `fused` says. Ok(false):
    /// no algorithm (nothing queued).
    fn product(
        &self,
        p: &LinearProblem,
        epilogue: cublasLtEpilogue_t,
        fused: Fused,
    ) -> Result<bool, String> {
        let ty = data_type(p.dtype).ok_or("unsupported dtype")?;
        let f32_type = cudaDataType_t::CUDA_R_32F;
        let (rows, n, k) = (p.rows as u64, p.n as u64, p.k as u64);
        let c_address = if fused.residual { p.residual } else { None };
        // Column-major view of the row-major product: Dᵀ[n, rows] = W[n, k] · Xᵀ[k, rows],
        // where W is stored as a column-major [k, n] (hence TRANSA) and Xᵀ as [k, rows].
        let desc = lt::create_matmul_desc(cublasComputeType_t::CUBLAS_COMPUTE_32F, f32_type)
            .map_err(|e| format!("cublasLtMatmulDescCreate: {e}"))?;
        let desc_guard = Descriptor::Matmul(desc);
        set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_TRANSA, &OP_T)?;
        set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_TRANSB, &OP_N)?;
        set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        if let Some(bias) = p.bias.filter(|_| fused.bias) {
            set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
            set_desc(
                desc,
                DescAttr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &f32_type,
            )?;
        }
        let layout = |t: cudaDataType_t, r: u64, c: u64, ld: u64| {
            lt::create_matrix_layout(t, r, c, ld as i64)
                .map(|l| (l, Descriptor::Layout(l)))
                .map_err(|e| format!("cublasLtMatrixLayoutCreate: {e}"))
        };
        let (a_layout, _a) = layout(ty, k, n, k)?;
        let (b_layout, _b) = layout(ty, k, rows, k)?;
        let (d_layout, _d) = layout(f32_type, n, rows, n)?;
        let align = [
            alignment(p.w),
            alignment(p.x),
            alignment(c_address.unwrap_or(p.out)),
            alignment(p.out),
        ];
        let key = AlgoKey {
            dtype: p.dtype,
            rows: p.rows,
            n: p.n,
            k: p.k,
            epilogue,
            with_c: c_address.is_some(),
            align,
        };
        let cached = self
            .algos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let algo = match cached {
            Some(algo) => algo,
            None => {
                let pref = lt::create_matmul_pref()
                    .map_err(|e| format!("cublasLtMatmulPreferenceCreate: {e}"))?;
                let _pref_guard = Descriptor::Preference(pref);
                set_pref(
                    pref,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &(self.workspace.bytes as u64),
                )?;
                // The heuristic assumes 256-byte aligned operands unless told
                // otherwise; arena offsets are only 64-byte aligned.
                for (attr, bytes) in [
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ]
                .into_iter()
                .zip(align)
                {
                    set_pref(pref, attr, &bytes)?;
                }
                // SAFETY: every descriptor is live (their guards drop after this call).
                let found = unsafe {
                    lt::get_matmul_algo_heuristic(
                        self.handle.0,
                        desc,
                        a_layout,
                        b_layout,
                        d_layout,
                        d_layout,
                        pref,
                    )
                };
                let algo = found.ok().map(|h| h.algo);
                let mut algos = self.algos.lock().unwrap_or_else(|e| e.into_inner());
                if algos.len() > 4096 {
                    algos.clear(); // many shapes (varying prompt lengths): start over
                }
                algos.insert(key, algo);
                algo
            }
        };
        let Some(algo) = algo else {
            return Ok(false);
        };
        let (alpha, beta) = (1.0f32, if c_address.is_some() { 1.0f32 } else { 0.0 });
        // SAFETY: live descriptors; w, x, out, residual and bias address device
        // buffers of the sizes the layouts describe (gemm.rs derives them from the
        // shapes); alpha/beta are host scalars; the workspace is used on this stream
        // only. C shares D's layout, so a residual aliasing out is cuBLASLt's in-place form.
        unsafe {
            lt::matmul(
                self.handle.0,
                desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                p.w as *const c_void,
                a_layout,
                p.x as *const c_void,
                b_layout,
                c_address.unwrap_or(p.out) as *const c_void,
                d_layout,
                p.out as *mut c_void,
                d_layout,
                &algo,
                self.workspace.address as *mut c_void,
                self.workspace.bytes,
                self.stream,
            )
        }
        .map_err(|e| format!("cublasLtMatmul: {e}"))?;
        drop(desc_guard);
        Ok(true)
    }
}

/// The largest deviation of `got` from `0.5·s·(1 + tanh(√(2/π)·(s + 0.044715·s³)))`
/// (in f64), as |got - want| / (1 + |want|).
fn got_vs_tanh_gelu(got: &[f32], sums: &[f32]) -> f64 {
    got.iter()
        .zip(sums)
        .map(|(&g, &s)| {
            let s = s as f64;
            let want = 0.5
                * s
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (s + 0.044715 * s * s * s)).tanh());
            (g as f64 - want).abs() / (1.0 + want.abs())
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtserve_core::kernels::frame::epilogue::activate;

    #[test]
    fn only_the_tanh_gelu_is_fused_and_only_when_checked() {
        use cublasLtEpilogue_t::*;
        assert_eq!(
            epilogue(Activation::Relu, true, false),
            Some(CUBLASLT_EPILOGUE_RELU_BIAS)
        );
        assert_eq!(epilogue(Activation::GeluTanh, true, false), None);
        assert_eq!(
            epilogue(Activation::GeluTanh, true, true),
            Some(CUBLASLT_EPILOGUE_GELU_BIAS)
        );
        assert_eq!(epilogue(Activation::Gelu, false, true), None);
        assert_eq!(epilogue(Activation::Silu, true, true), None);
    }

    #[test]
    fn the_gelu_check_tells_the_tanh_form_from_erf() {
        let sums: Vec<f32> = (0..1000).map(|i| -8.0 + 0.016 * i as f32).collect();
        let tanh_form: Vec<f32> = sums
            .iter()
            .map(|&s| activate(s, Activation::GeluTanh))
            .collect();
        assert!(got_vs_tanh_gelu(&tanh_form, &sums) < 1e-6);
        let erf_form: Vec<f32> = sums
            .iter()
            .map(|&s| activate(s, Activation::Gelu))
            .collect();
        assert!(got_vs_tanh_gelu(&erf_form, &sums) > 1e-4);
    }

    #[test]
    fn alignments_are_powers_of_two_up_to_256() {
        assert_eq!(alignment(0x1000), 256);
        assert_eq!(alignment(0x1040), 64);
        assert_eq!(alignment(0x1004), 4);
    }
}
