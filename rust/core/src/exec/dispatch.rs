//! One node on the eager ops: the executor's op dispatch. Each arm maps a
//! graph op onto the eager op of `crate::ops` with the node's attributes.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::dim::resolve_all;
use crate::graph::{Node, Op, TopKOutput};
use crate::layout::IndexItem;
use crate::ops::attention::{attention, AttentionOptions};
use crate::ops::matmul::{linear, matmul, Weight};
use crate::ops::rope::{rope, RopeOptions};
use crate::ops::{binary, concat, gather, norm, reduce, select, softmax, topk, unary};
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
            has_residual,
            packed,
        } => {
            let weight = match packed {
                Some(p) => Weight::Packed(&p.0),
                None => Weight::Tensor(arg(1)?),
            };
            linear(
                arg(0)?,
                weight,
                optional(*has_bias, 2)?,
                *activation,
                optional(*has_residual, 2 + usize::from(*has_bias))?,
            )
        }
        Op::Binary(op) => binary::binary(*op, arg(0)?, arg(1)?),
        Op::Unary(op) => unary::unary(*op, arg(0)?),
        Op::Softmax { axis, log: false } => softmax::softmax(arg(0)?, *axis),
        Op::Softmax { axis, log: true } => softmax::log_softmax(arg(0)?, *axis),
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
        Op::Rope {
            theta,
            interleaved,
            offset,
            rotary_dim,
            has_positions,
            has_inv_freq,
        } => rope(
            arg(0)?,
            &RopeOptions {
                positions: optional(*has_positions, 1)?,
                offset: *offset,
                theta: *theta,
                interleaved: *interleaved,
                inv_freq: optional(*has_inv_freq, 1 + usize::from(*has_positions))?,
                rotary_dim: *rotary_dim,
            },
        ),
        Op::Attention {
            causal,
            scale,
            has_key_padding_mask,
            has_segments,
            has_append,
        } => {
            let at = 3 + usize::from(*has_key_padding_mask) + usize::from(*has_segments);
            let append = match (optional(*has_append, at)?, optional(*has_append, at + 1)?) {
                (Some(ka), Some(va)) => Some((ka.clone(), va.clone())),
                _ => None,
            };
            attention(
                arg(0)?,
                arg(1)?,
                arg(2)?,
                &AttentionOptions {
                    causal: *causal,
                    scale: *scale,
                    key_padding_mask: optional(*has_key_padding_mask, 3)?.cloned(),
                    segments: optional(*has_segments, 3 + usize::from(*has_key_padding_mask))?
                        .cloned(),
                    append,
                },
            )
        }
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
        Op::Slice {
            axis,
            start,
            stop,
            step,
        } => {
            let x = arg(0)?;
            let mut items = vec![
                IndexItem::Slice {
                    start: None,
                    stop: None,
                    step: 1,
                };
                x.ndim()
            ];
            items[*axis] = IndexItem::Slice {
                start: *start,
                stop: *stop,
                step: *step,
            };
            x.index(&items)?.contiguous()
        }
        Op::Reduce {
            kind,
            axis,
            keepdims,
        } => reduce::reduce(*kind, arg(0)?, *axis, *keepdims),
        Op::Where => select::where_(arg(0)?, arg(1)?, arg(2)?),
        Op::MaskedFill { value } => select::masked_fill(arg(0)?, arg(1)?, *value),
        Op::TopK {
            k,
            axis,
            largest,
            output,
        } => {
            let (values, indices) = topk::topk(arg(0)?, *k, *axis as isize, *largest)?;
            Ok(match output {
                TopKOutput::Values => values,
                TopKOutput::Indices => indices,
            })
        }
        Op::Cast { dtype } => arg(0)?.cast(*dtype),
    }
}
