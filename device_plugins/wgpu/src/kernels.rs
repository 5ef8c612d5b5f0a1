//! The WGSL kernels: one compute shader per kernel (each a file in
//! `kernels/`, prefixed by `common.wgsl`), and the codes their parameters use.
//!
//! Every buffer is bound as `array<u32>` or `array<f32>`: WGSL has no 8- or
//! 16-bit storage types and no 64-bit ones, so kernels that move elements of
//! any dtype (copy, select, embedding, cast) work one 32-bit output word at a
//! time, and i64 values travel as (low, high) word pairs.

use rtserve_core::kernels::generic::elementwise::{Binary, Unary};
use rtserve_core::DType;

/// One compute pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Unary,
    Binary,
    Softmax,
    Norm,
    Rope,
    Attention,
    Gemm,
    Reduce,
    TopK,
    Copy,
    Select,
    Embedding,
    Cast,
}

impl Kernel {
    pub const ALL: [Kernel; 13] = [
        Kernel::Unary,
        Kernel::Binary,
        Kernel::Softmax,
        Kernel::Norm,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::Gemm,
        Kernel::Reduce,
        Kernel::TopK,
        Kernel::Copy,
        Kernel::Select,
        Kernel::Embedding,
        Kernel::Cast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Unary => "unary",
            Kernel::Binary => "binary",
            Kernel::Softmax => "softmax",
            Kernel::Norm => "norm",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::Gemm => "gemm",
            Kernel::Reduce => "reduce",
            Kernel::TopK => "topk",
            Kernel::Copy => "copy",
            Kernel::Select => "select",
            Kernel::Embedding => "embedding",
            Kernel::Cast => "cast",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kernel::Unary => include_str!("kernels/unary.wgsl"),
            Kernel::Binary => include_str!("kernels/binary.wgsl"),
            Kernel::Softmax => include_str!("kernels/softmax.wgsl"),
            Kernel::Norm => include_str!("kernels/norm.wgsl"),
            Kernel::Rope => include_str!("kernels/rope.wgsl"),
            Kernel::Attention => include_str!("kernels/attention.wgsl"),
            Kernel::Gemm => include_str!("kernels/gemm.wgsl"),
            Kernel::Reduce => include_str!("kernels/reduce.wgsl"),
            Kernel::TopK => include_str!("kernels/topk.wgsl"),
            Kernel::Copy => include_str!("kernels/copy.wgsl"),
            Kernel::Select => include_str!("kernels/select.wgsl"),
            Kernel::Embedding => include_str!("kernels/embedding.wgsl"),
            Kernel::Cast => include_str!("kernels/cast.wgsl"),
        }
    }

    /// The full WGSL source: the common prelude, then the kernel with each
    /// `//#bits NAME` line expanded into a reader of NAME's sub-word elements.
    pub fn source(self) -> String {
        let mut out = String::from(include_str!("kernels/common.wgsl"));
        for line in self.body().lines() {
            match line.strip_prefix("//#bits ") {
                Some(buffer) => out.push_str(&bits_reader(buffer.trim())),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

/// `bits_NAME(e, es)`: element e (of es = 1, 2 or 4 bytes) of the u32 array NAME.
fn bits_reader(buffer: &str) -> String {
    format!(
        "fn bits_{buffer}(e: u32, es: u32) -> u32 {{\n\
         \x20   let byte = e * es;\n\
         \x20   let w = {buffer}[byte / 4u];\n\
         \x20   if (es == 4u) {{ return w; }}\n\
         \x20   return (w >> ((byte % 4u) * 8u)) & ((1u << (es * 8u)) - 1u);\n\
         }}"
    )
}

/// The cast kernel's code of a dtype, None for f64 (WGSL has no f64).
pub fn dtype_code(d: DType) -> Option<u32> {
    Some(match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::I64 => 3,
        DType::I32 => 4,
        DType::I16 => 5,
        DType::I8 => 6,
        DType::U8 => 7,
        DType::Bool => 8,
        DType::F64 => return None,
    })
}

pub fn unary_code(op: Unary) -> u32 {
    match op {
        Unary::Exp => 0,
        Unary::Log => 1,
        Unary::Tanh => 2,
        Unary::Erf => 3,
        Unary::Gelu => 4,
        Unary::GeluTanh => 5,
        Unary::Silu => 6,
        Unary::Relu => 7,
        Unary::Sigmoid => 8,
        Unary::Sqrt => 9,
        Unary::Rsqrt => 10,
        Unary::Neg => 11,
        Unary::Abs => 12,
    }
}

pub fn binary_code(op: Binary) -> u32 {
    match op {
        Binary::Add => 0,
        Binary::Sub => 1,
        Binary::Mul => 2,
        Binary::Div => 3,
        Binary::Max => 4,
        Binary::Min => 5,
        Binary::Pow => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel parses and validates (naga, no GPU needed).
    #[test]
    fn every_kernel_is_valid_wgsl() {
        for k in Kernel::ALL {
            let src = k.source();
            let module = wgpu::naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{}: {}", k.name(), e.emit_to_string(&src)));
            wgpu::naga::valid::Validator::new(
                wgpu::naga::valid::ValidationFlags::all(),
                wgpu::naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", k.name()));
        }
    }
}
