//! The CUDA C kernels of `kernels.cu`, compiled once per process by NVRTC for
//! the GPU's architecture, and how the host passes them arguments.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use rtserve_core::DType;

/// The source NVRTC compiles (no CUDA headers needed).
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every `extern "C"` kernel of [`SOURCE`].
pub const NAMES: &[&str] = &[
    "cast_any",
    "f32_to_half",
    "f32_to_half4",
    "unary_f32",
    "unary_f64",
    "unary_i64",
    "unary_i32",
    "unary_i16",
    "unary_i8",
    "unary_u8",
    "binary_f32",
    "binary_f64",
    "binary_i64",
    "binary_i32",
    "binary_i16",
    "binary_i8",
    "binary_u8",
    "bias_act_residual",
    "strided_copy",
    "copy_rows",
    "where_any",
    "masked_fill_any",
    "embedding_rows",
    "softmax_f32",
    "layer_norm_f32",
    "rms_norm_f32",
    "rope_f32",
    "attention_f32",
    "reduce_f64",
    "reduce_i64",
    "topk_rows",
];

/// The dtype codes the kernels switch on (see the top of kernels.cu).
pub fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => 0,
        DType::F64 => 1,
        DType::F16 => 2,
        DType::BF16 => 3,
        DType::I64 => 4,
        DType::I32 => 5,
        DType::I16 => 6,
        DType::I8 => 7,
        DType::U8 => 8,
        DType::Bool => 9,
    }
}

/// The virtual architecture NVRTC targets: the GPU's own, so the driver's
/// JIT of the PTX may use everything the chip has.
fn arch(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, _) => "compute_90",
        (10, _) => "compute_100",
        (12, _) => "compute_120",
        (m, _) if m > 12 => "compute_120",
        _ => "compute_70",
    }
}

/// Compiles [`SOURCE`] to PTX (no GPU needed: NVRTC alone).
pub fn compile(compute_capability: (i32, i32)) -> Result<cudarc::nvrtc::Ptx, String> {
    let opts = CompileOptions {
        arch: Some(arch(compute_capability.0, compute_capability.1)),
        // Full-precision division and square roots: the CPU reference is IEEE.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        options: vec!["--diag-suppress=186".to_owned()],
        name: Some("rtserve_kernels.cu".to_owned()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts).map_err(|e| format!("NVRTC failed on kernels.cu: {e}"))
}

/// The loaded kernels by name.
pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>, compute_capability: (i32, i32)) -> Result<Kernels, String> {
        let ptx = compile(compute_capability)?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| format!("loading the compiled kernels: {e}"))?;
        let mut functions = HashMap::new();
        for &name in NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| format!("kernel {name}: {e}"))?;
            functions.insert(name, f);
        }
        Ok(Kernels { functions })
    }

    pub fn get(&self, name: &str) -> Option<&CudaFunction> {
        self.functions.get(name)
    }
}

/// The most dims a broadcasting or strided kernel indexes.
pub const MAX_DIMS: usize = 8;

/// `struct Strided` of kernels.cu: the output shape and up to three operands'
/// element strides (0 along broadcast dims).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Strided {
    pub ndim: i32,
    pub pad: i32,
    pub shape: [i64; MAX_DIMS],
    pub stride: [[i64; MAX_DIMS]; 3],
}

/// One kernel argument, held by value until the launch.
#[derive(Clone, Copy, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a launch's few arguments live on the stack for one call"
)]
pub enum Arg {
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
    /// A device address (0 for a null pointer).
    Ptr(u64),
    Strided(Strided),
}

impl Arg {
    /// The address cuLaunchKernel reads this argument's bytes from.
    pub fn as_param(&mut self) -> *mut c_void {
        match self {
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
            Arg::U64(v) | Arg::Ptr(v) => v as *mut u64 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::Strided(v) => v as *mut Strided as *mut c_void,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_kernel_is_in_the_source() {
        for name in NAMES {
            assert!(
                SOURCE.contains(&format!("void {name}(")) || SOURCE.contains(&format!("({name},")),
                "{name} is not defined in kernels.cu"
            );
        }
        assert_eq!(std::mem::size_of::<Strided>(), 8 + 8 * MAX_DIMS * 4);
    }

    /// NVRTC compiles the kernels without a GPU: run it wherever the library is.
    #[test]
    fn nvrtc_compiles_the_kernels_where_it_is_installed() {
        // SAFETY: only dlopen()s NVRTC under its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: libnvrtc.so.13 not found (NVRTC is not installed here)");
            return;
        }
        let ptx = compile((9, 0)).unwrap();
        let text = ptx.to_src();
        for name in NAMES {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "{name} missing from PTX"
            );
        }
    }
}
