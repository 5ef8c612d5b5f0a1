//! What a node computes. Each op maps onto one eager op of `crate::ops`; the
//! input order of a node is the argument order of that op.

use std::sync::Arc;

use crate::dtype::DType;
use crate::kernels::frame::epilogue::Activation;
use crate::kernels::generic::elementwise::{Binary, Unary};
use crate::ops::matmul::PackedWeight;
use crate::ops::reduce::Reduce;
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
    /// `act(x · Wᵀ + bias) + residual` (inputs: x, w [out, in], then bias
    /// [out] if `has_bias`, then residual [..., out] if `has_residual`). With
    /// `packed` (set by `passes::prepack_weights` for constant weights) the
    /// GEMM reads that copy of w; the w input still gives the shapes.
    Linear {
        activation: Activation,
        has_bias: bool,
        has_residual: bool,
        packed: Option<Prepacked>,
    },
    /// Elementwise with broadcasting (inputs: a, b).
    Binary(Binary),
    /// Elementwise (input: x).
    Unary(Unary),
    /// softmax, or log_softmax when `log` (input: x).
    Softmax {
        axis: isize,
        log: bool,
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
    /// Inputs: x [batch, seq, heads, head_dim], then positions if
    /// `has_positions` (else token s is at `offset + s`), then inv_freq if
    /// `has_inv_freq` (else derived from `theta`).
    Rope {
        theta: f64,
        interleaved: bool,
        offset: i64,
        rotary_dim: Option<usize>,
        has_positions: bool,
        has_inv_freq: bool,
    },
    /// Inputs: q, k, v in [batch, seq, heads, head_dim] layout, then the
    /// key padding mask [batch, seq_k] if `has_key_padding_mask`, then the segment
    /// offsets [n + 1] if `has_segments` (packed sequences, see `ops::attention`),
    /// then k_append and v_append if `has_append` (keys after k and v, read in place).
    Attention {
        causal: bool,
        scale: Option<f32>,
        has_key_padding_mask: bool,
        has_segments: bool,
        has_append: bool,
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
    /// `x[start:stop:step]` along `axis` (numpy semantics); the result is
    /// materialized (contiguous).
    Slice {
        axis: usize,
        start: Option<isize>,
        stop: Option<isize>,
        step: isize,
    },
    /// sum, mean, max, min or argmax over `axis` (None: every element).
    Reduce {
        kind: Reduce,
        axis: Option<isize>,
        keepdims: bool,
    },
    /// `cond ? a : b` with broadcasting (inputs: cond, a, b).
    Where,
    /// x with `value` where mask is true (inputs: x, mask).
    MaskedFill {
        value: f64,
    },
    /// One output of top-k along `axis`: the sorted values or their i64
    /// indices (a node has one output, so top-k is two nodes).
    TopK {
        k: usize,
        axis: usize,
        largest: bool,
        output: TopKOutput,
    },
    Cast {
        dtype: DType,
    },
}

/// A weight packed once for the GEMM, shared by every run (and every clone
/// of the op). Debug shows its shape, not its panels.
#[derive(Clone)]
pub struct Prepacked(pub Arc<PackedWeight>);

impl std::fmt::Debug for Prepacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.0;
        write!(
            f,
            "Prepacked({}[{}, {}])",
            p.dtype, p.out_features, p.in_features
        )
    }
}

/// Which output of top-k a [`Op::TopK`] node defines.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopKOutput {
    Values,
    Indices,
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
            Op::Softmax { log: false, .. } => "softmax",
            Op::Softmax { log: true, .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Embedding => "embedding",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Reduce { kind, .. } => kind.name(),
            Op::Where => "where",
            Op::MaskedFill { .. } => "masked_fill",
            Op::TopK { .. } => "topk",
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

    /// The name, with the attributes in parentheses when there are any (error messages).
    pub fn described(&self) -> String {
        match self.attributes() {
            a if a.is_empty() => self.name().to_string(),
            a => format!("{} ({a})", self.name()),
        }
    }

    /// The op's attributes as a summary prints them (`axis=-1`), maybe empty.
    pub fn attributes(&self) -> String {
        match self {
            Op::Input { name } => format!("'{name}'"),
            Op::Linear {
                activation,
                has_residual,
                packed,
                ..
            } => {
                let mut parts = vec![];
                if *activation != Activation::None {
                    parts.push(format!("activation={activation:?}").to_lowercase());
                }
                if *has_residual {
                    parts.push("residual".to_owned());
                }
                if packed.is_some() {
                    parts.push("prepacked".to_owned());
                }
                parts.join(", ")
            }
            Op::Softmax { axis, .. } => format!("axis={axis}"),
            Op::LayerNorm { eps, .. } | Op::RmsNorm { eps, .. } => format!("eps={eps:e}"),
            Op::Rope {
                theta,
                interleaved,
                offset,
                rotary_dim,
                has_positions,
                has_inv_freq,
            } => {
                let mut parts = vec![];
                if !has_inv_freq {
                    parts.push(format!("theta={theta}"));
                }
                parts.push(format!("interleaved={interleaved}"));
                if !has_positions && *offset != 0 {
                    parts.push(format!("offset={offset}"));
                }
                if let Some(d) = rotary_dim {
                    parts.push(format!("rotary_dim={d}"));
                }
                parts.join(", ")
            }
            Op::Attention {
                causal,
                scale,
                has_segments,
                has_append,
                ..
            } => {
                let mut parts = vec![format!("causal={causal}")];
                if let Some(s) = scale {
                    parts.push(format!("scale={s}"));
                }
                if *has_segments {
                    parts.push("segments".into());
                }
                if *has_append {
                    parts.push("append".into());
                }
                parts.join(", ")
            }
            Op::Reshape { dims } => format_dims(dims),
            Op::Transpose { perm } => format!("perm={perm:?}"),
            Op::Concat { axis } => format!("axis={axis}"),
            Op::Slice {
                axis,
                start,
                stop,
                step,
            } => {
                let bound = |b: &Option<isize>| b.map_or(String::new(), |v| v.to_string());
                let (start, stop) = (bound(start), bound(stop));
                match step {
                    1 => format!("axis={axis}, {start}:{stop}"),
                    _ => format!("axis={axis}, {start}:{stop}:{step}"),
                }
            }
            Op::Reduce { axis, keepdims, .. } => match axis {
                Some(a) => format!("axis={a}, keepdims={keepdims}"),
                None => format!("keepdims={keepdims}"),
            },
            Op::MaskedFill { value } => format!("value={value}"),
            Op::TopK {
                k,
                axis,
                largest,
                output,
            } => format!("k={k}, axis={axis}, largest={largest}, output={output:?}").to_lowercase(),
            Op::Cast { dtype } => format!("dtype={dtype}"),
            _ => String::new(),
        }
    }
}
