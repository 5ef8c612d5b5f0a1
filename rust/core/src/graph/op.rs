//! What a node computes. Each op maps onto one eager op of `crate::ops`; the
//! input order of a node is the argument order of that op.

use crate::dtype::DType;
use crate::kernels::frame::epilogue::Activation;
use crate::kernels::generic::elementwise::{Binary, Unary};
use crate::tensor::Tensor;

use super::dim::{format_dims, Dim};

#[derive(Clone, Debug)]
pub enum Op {
    /// A named graph input; its tensor comes with each run.
    Input {
        name: String,
    },
    /// A tensor fixed at build time (weights). Cloning shares its storage.
    Constant(Tensor),
    /// `a @ b` with numpy semantics (inputs: a, b).
    MatMul,
    /// `act(x · Wᵀ + bias)` (inputs: x, w [out, in], then bias [out] if `has_bias`).
    Linear {
        activation: Activation,
        has_bias: bool,
    },
    /// Elementwise with broadcasting (inputs: a, b).
    Binary(Binary),
    /// Elementwise (input: x).
    Unary(Unary),
    Softmax {
        axis: isize,
    },
    /// Inputs: x, then weight if `has_weight`, then bias if `has_bias`.
    LayerNorm {
        eps: f64,
        has_weight: bool,
        has_bias: bool,
    },
    /// Inputs: x, then weight if `has_weight`.
    RmsNorm {
        eps: f64,
        has_weight: bool,
    },
    /// x [batch, seq, heads, head_dim], positions 0..seq.
    Rope {
        theta: f64,
        interleaved: bool,
    },
    /// Inputs: q, k, v in [batch, seq, heads, head_dim] layout.
    Attention {
        causal: bool,
        scale: Option<f32>,
    },
    /// Inputs: weight [vocab, dim], ids.
    Embedding,
    /// The output dims, with `-1` already inferred (symbols kept).
    Reshape {
        dims: Vec<Dim>,
    },
    /// Permutes the dims; the result is materialized (contiguous).
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: usize,
    },
    Sum {
        axis: Option<isize>,
        keepdims: bool,
    },
    Mean {
        axis: Option<isize>,
        keepdims: bool,
    },
    Cast {
        dtype: DType,
    },
}

impl Op {
    /// The op's name in messages and summaries (the eager op's name).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Constant(_) => "constant",
            Op::MatMul => "matmul",
            Op::Linear { .. } => "linear",
            Op::Binary(b) => b.name(),
            Op::Unary(u) => u.name(),
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Embedding => "embedding",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Sum { .. } => "sum",
            Op::Mean { .. } => "mean",
            Op::Cast { .. } => "cast",
        }
    }

    /// Inputs and constants: values that come from outside a run.
    pub fn is_external(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Constant(_))
    }

    /// Elementwise ops whose output may overwrite their first input.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Binary(_) | Op::Unary(_))
    }

    /// The op's attributes as a summary prints them (`axis=-1`), maybe empty.
    pub fn attributes(&self) -> String {
        match self {
            Op::Input { name } => format!("'{name}'"),
            Op::Linear { activation, .. } if *activation != Activation::None => {
                format!("activation={activation:?}").to_lowercase()
            }
            Op::Softmax { axis } => format!("axis={axis}"),
            Op::LayerNorm { eps, .. } | Op::RmsNorm { eps, .. } => format!("eps={eps:e}"),
            Op::Rope { theta, interleaved } => format!("theta={theta}, interleaved={interleaved}"),
            Op::Attention { causal, scale } => match scale {
                Some(s) => format!("causal={causal}, scale={s}"),
                None => format!("causal={causal}"),
            },
            Op::Reshape { dims } => format_dims(dims),
            Op::Transpose { perm } => format!("perm={perm:?}"),
            Op::Concat { axis } => format!("axis={axis}"),
            Op::Sum { axis, keepdims } | Op::Mean { axis, keepdims } => match axis {
                Some(a) => format!("axis={a}, keepdims={keepdims}"),
                None => format!("keepdims={keepdims}"),
            },
            Op::Cast { dtype } => format!("dtype={dtype}"),
            _ => String::new(),
        }
    }
}
