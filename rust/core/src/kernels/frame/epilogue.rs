//! What a GEMM applies to each finished tile of C while it is still in cache:
//! `C = act(C + bias) + residual`.

use crate::kernels::frame::pack::MatRef;
use crate::kernels::frame::rowwise;
use crate::kernels::generic::elementwise::Unary;
use crate::kernels::generic::math::{erf_f32, sigmoid_f32, tanh_f32};

/// Activation fused into a GEMM epilogue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// erf form: x/2 (1 + erf(x/√2)).
    Gelu,
    /// tanh form: x/2 (1 + tanh(√(2/π)(x + 0.044715x³))).
    GeluTanh,
    Silu,
}

impl Activation {
    pub fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "none" | "" => Activation::None,
            "relu" => Activation::Relu,
            "gelu" | "gelu_erf" => Activation::Gelu,
            "gelu_tanh" | "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// Bias (length N), activation, and residual (M × N) fused after the product.
#[derive(Copy, Clone, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub activation: Option<Activation>,
    pub residual: Option<MatRef<f32>>,
}

impl Epilogue<'_> {
    pub fn is_identity(&self) -> bool {
        self.bias.is_none()
            && matches!(self.activation, None | Some(Activation::None))
            && self.residual.is_none()
    }
}

#[inline(always)]
pub fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x * (1.0 + tanh_f32(0.797_884_6 * (x + 0.044_715 * x * x * x)))
        }
        Activation::Silu => x * sigmoid_f32(x),
    }
}

/// Applies the epilogue to `row` = C[i, j0 .. j0 + row.len()].
#[inline(always)]
pub fn apply_row(row: &mut [f32], i: usize, j0: usize, epi: &Epilogue<'_>) {
    let isa = crate::kernels::isa();
    if let Some(bias) = epi.bias {
        rowwise::add_assign_f32(isa, row, &bias[j0..j0 + row.len()]);
    }
    let unary = match epi.activation.unwrap_or(Activation::None) {
        Activation::None => None,
        Activation::Relu => Some(Unary::Relu),
        Activation::Gelu => Some(Unary::Gelu),
        Activation::GeluTanh => Some(Unary::GeluTanh),
        Activation::Silu => Some(Unary::Silu),
    };
    if let Some(op) = unary {
        // The SIMD unary kernels of the running tier (the scalar `activate` is
        // several times slower for erf/tanh); they read a staged copy.
        let mut tmp = [0f32; 256];
        for piece in row.chunks_mut(tmp.len()) {
            let src = &mut tmp[..piece.len()];
            src.copy_from_slice(piece);
            rowwise::unary_f32(isa, op, src, piece);
        }
    }
    if let Some(res) = epi.residual {
        if res.cs == 1 {
            // SAFETY: the residual view is M × N over valid memory and row i's columns
            // j0 .. j0 + row.len() are inside it, contiguous (column stride 1).
            let src = unsafe {
                std::slice::from_raw_parts(
                    res.ptr.offset(i as isize * res.rs + j0 as isize),
                    row.len(),
                )
            };
            rowwise::add_assign_f32(isa, row, src);
        } else {
            for (j, c) in row.iter_mut().enumerate() {
                // SAFETY: the residual view is M × N and (i, j0 + j) is inside C's bounds.
                *c += unsafe { res.at(i, j0 + j) };
            }
        }
    }
}
