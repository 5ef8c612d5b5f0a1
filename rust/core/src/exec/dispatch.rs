//! One node on the eager ops: the executor's op dispatch. Each arm maps a
//! graph op onto the eager op of `crate::ops` with the node's attributes.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::dim::resolve_all;
use crate::graph::{Node, Op};
use crate::ops::attention::{attention, AttentionOptions};
use crate::ops::matmul::{linear, matmul, Weight};
use crate::ops::rope::{rope, RopeOptions};
use crate::ops::{binary, concat, gather, norm, reduce, softmax, unary};
use crate::tensor::Tensor;

/// One node on the eager ops.
pub fn execute(
    node: &Node,
    args: &[&Tensor],
    inputs: &HashMap<String, Tensor>,
    bindings: &HashMap<String, usize>,
) -> Result<Tensor> {
    let arg = |i: usize| {
        args.get(i)
            .copied()
            .ok_or_else(|| Error::Internal(format!("{} lacks its input {i}", node.op.name())))
    };
    let optional = |present: bool, i: usize| present.then(|| arg(i)).transpose();
    match &node.op {
        Op::Input { name } => inputs
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("input '{name}' vanished"))),
        Op::Constant(t) => Ok(t.clone()),
        Op::MatMul => matmul(arg(0)?, arg(1)?),
        Op::Linear {
            activation,
            has_bias,
        } => linear(
            arg(0)?,
            Weight::Tensor(arg(1)?),
            optional(*has_bias, 2)?,
            *activation,
            None,
        ),
        Op::Binary(op) => binary::binary(*op, arg(0)?, arg(1)?),
        Op::Unary(op) => unary::unary(*op, arg(0)?),
        Op::Softmax { axis } => softmax::softmax(arg(0)?, *axis),
        Op::LayerNorm {
            eps,
            has_weight,
            has_bias,
        } => norm::layer_norm(
            arg(0)?,
            optional(*has_weight, 1)?,
            optional(*has_bias, 1 + usize::from(*has_weight))?,
            *eps,
        ),
        Op::RmsNorm { eps, has_weight } => norm::rms_norm(arg(0)?, optional(*has_weight, 1)?, *eps),
        Op::Rope { theta, interleaved } => rope(
            arg(0)?,
            &RopeOptions {
                theta: *theta,
                interleaved: *interleaved,
                ..RopeOptions::default()
            },
        ),
        Op::Attention { causal, scale } => attention(
            arg(0)?,
            arg(1)?,
            arg(2)?,
            &AttentionOptions {
                causal: *causal,
                scale: *scale,
                key_padding_mask: None,
            },
        ),
        Op::Embedding => gather::embedding(arg(0)?, arg(1)?),
        Op::Reshape { dims } => {
            let shape: Vec<isize> = resolve_all(dims, bindings)?
                .into_iter()
                .map(|d| d as isize)
                .collect();
            arg(0)?.reshape(&shape)
        }
        Op::Transpose { perm } => arg(0)?.permute(perm)?.contiguous(),
        Op::Concat { axis } => {
            let parts: Vec<Tensor> = args.iter().map(|&t| t.clone()).collect();
            concat::concat(&parts, *axis as isize)
        }
        Op::Sum { axis, keepdims } => reduce::sum(arg(0)?, *axis, *keepdims),
        Op::Mean { axis, keepdims } => reduce::mean(arg(0)?, *axis, *keepdims),
        Op::Cast { dtype } => arg(0)?.cast(*dtype),
    }
}
