//! The invariants of a graph, checked after every pass in debug builds
//! (`crate::passes::optimize`): what the builder guarantees by construction
//! must still hold after a rewrite assembled nodes by hand.
//!
//! - every node reads only earlier nodes (the node order is an execution order);
//! - inputs and constants read nothing;
//! - the input list names each input node exactly once, by its own name, and
//!   input names are unique; outputs name existing nodes, names unique;
//! - each node's stored type is what the builder infers for its op and
//!   inputs: the node is built again, with the same builder method, in a
//!   scratch graph, and the two types must be equal;
//! - a pre-packed linear weight has the shape and dtype of the weight input.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::ops::matmul::PackedWeight;

use super::builder::{AttentionSpec, Graph, RopeArgs};
use super::dim::Dim;
use super::node::{Node, ValueId};
use super::op::{Op, TopKOutput};

/// Checks the invariants of `graph`; a broken one is an [`Error::Internal`].
pub fn verify(graph: &Graph) -> Result<()> {
    let nodes = graph.nodes();
    let broken = |id: ValueId, what: String| {
        Error::Internal(format!(
            "node %{id} ({}): {what}",
            nodes.get(id).map_or("?", |n| n.op.name())
        ))
    };
    for (id, node) in nodes.iter().enumerate() {
        if let Some(&late) = node.inputs.iter().find(|&&i| i >= id) {
            return Err(broken(id, format!("reads %{late}, which is not earlier")));
        }
        if node.op.is_external() && !node.inputs.is_empty() {
            return Err(broken(
                id,
                format!("reads {:?}, but takes no inputs", node.inputs),
            ));
        }
    }
    check_inputs(graph)?;
    let mut names = HashSet::new();
    for (name, v) in graph.outputs() {
        if *v >= nodes.len() {
            return Err(Error::Internal(format!(
                "output '{name}' is %{v}, past the last node (%{})",
                nodes.len().wrapping_sub(1)
            )));
        }
        if !names.insert(name) {
            return Err(Error::Internal(format!("two outputs are named '{name}'")));
        }
    }
    // Build every node again in a scratch graph: its builder method infers the type.
    let mut scratch = Graph::new();
    let mut map: Vec<ValueId> = Vec::with_capacity(nodes.len());
    for (id, node) in nodes.iter().enumerate() {
        let rebuilt = rebuild(&mut scratch, node, &map)
            .map_err(|e| broken(id, format!("its inputs no longer fit the op: {e}")))?;
        let inferred = scratch.value_type(rebuilt)?;
        if *inferred != node.out {
            return Err(broken(
                id,
                format!(
                    "stored type {} but its op and inputs give {inferred}",
                    node.out
                ),
            ));
        }
        if let Op::Linear {
            packed: Some(p), ..
        } = &node.op
        {
            check_packed(graph, node, &p.0).map_err(|what| broken(id, what))?;
        }
        map.push(rebuilt);
    }
    Ok(())
}

/// Input nodes and the input list agree, names unique.
fn check_inputs(graph: &Graph) -> Result<()> {
    let nodes = graph.nodes();
    let mut names = HashSet::new();
    let mut listed = HashSet::new();
    for (name, v) in graph.inputs() {
        match nodes.get(*v).map(|n| &n.op) {
            Some(Op::Input { name: own }) if own == name => {}
            _ => {
                return Err(Error::Internal(format!(
                    "input '{name}' is %{v}, which is not an input node of that name"
                )))
            }
        }
        if !names.insert(name) {
            return Err(Error::Internal(format!("two inputs are named '{name}'")));
        }
        listed.insert(*v);
    }
    for (id, node) in nodes.iter().enumerate() {
        if let Op::Input { name } = &node.op {
            if !listed.contains(&id) {
                return Err(Error::Internal(format!(
                    "input node %{id} ('{name}') is missing from the graph's inputs"
                )));
            }
        }
    }
    Ok(())
}

/// The packed copy of a linear weight matches the weight input.
fn check_packed(graph: &Graph, node: &Node, p: &PackedWeight) -> std::result::Result<(), String> {
    let w = &graph.nodes()[node.inputs[1]].out;
    let want = [Dim::Known(p.out_features), Dim::Known(p.in_features)];
    if w.dims != want || w.dtype != p.dtype {
        return Err(format!(
            "its pre-packed weight is {}[{}, {}] but the weight input is {w}",
            p.dtype, p.out_features, p.in_features
        ));
    }
    Ok(())
}

/// Adds `node` to `g` with the builder method of its op, its inputs mapped
/// through `map`; returns the new value.
fn rebuild(g: &mut Graph, node: &Node, map: &[ValueId]) -> Result<ValueId> {
    let ins: Vec<ValueId> = node.inputs.iter().map(|&i| map[i]).collect();
    let arg = |i: usize| {
        ins.get(i).copied().ok_or_else(|| {
            Error::Internal(format!(
                "{} has {} inputs, needs more",
                node.op.name(),
                ins.len()
            ))
        })
    };
    // Optional inputs follow the required ones in a fixed order.
    let mut next = 0usize;
    let mut take = |present: bool, first: usize| -> Result<Option<ValueId>> {
        if !present {
            return Ok(None);
        }
        let i = first + next;
        next += 1;
        arg(i).map(Some)
    };
    let expect = |n: usize| {
        if ins.len() == n {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "{} has {} inputs, expected {n}",
                node.op.name(),
                ins.len()
            )))
        }
    };
    let fixed = match &node.op {
        Op::Input { .. }
        | Op::Constant(_)
        | Op::Linear { .. }
        | Op::LayerNorm { .. }
        | Op::RmsNorm { .. }
        | Op::Rope { .. }
        | Op::Attention { .. }
        | Op::Concat { .. } => None,
        Op::MatMul | Op::Binary(_) | Op::Embedding | Op::MaskedFill { .. } => Some(2),
        Op::Where => Some(3),
        Op::Unary(_)
        | Op::Softmax { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Reduce { .. }
        | Op::TopK { .. }
        | Op::Cast { .. } => Some(1),
    };
    if let Some(n) = fixed {
        expect(n)?;
    }
    let v = match &node.op {
        Op::Input { name } => g.input(name, node.out.dims.clone(), node.out.dtype)?,
        Op::Constant(t) => g.constant(t.clone()),
        Op::MatMul => g.matmul(arg(0)?, arg(1)?)?,
        Op::Linear {
            activation,
            has_bias,
            has_residual,
            ..
        } => {
            let (x, w) = (arg(0)?, arg(1)?);
            let bias = take(*has_bias, 2)?;
            let residual = take(*has_residual, 2)?;
            expect(2 + next)?;
            g.linear_residual(x, w, bias, *activation, residual)?
        }
        Op::Binary(op) => g.binary(*op, arg(0)?, arg(1)?)?,
        Op::Unary(op) => g.unary(*op, arg(0)?)?,
        Op::Softmax { axis, log: false } => g.softmax(arg(0)?, *axis)?,
        Op::Softmax { axis, log: true } => g.log_softmax(arg(0)?, *axis)?,
        Op::LayerNorm {
            eps,
            has_weight,
            has_bias,
        } => {
            let x = arg(0)?;
            let weight = take(*has_weight, 1)?;
            let bias = take(*has_bias, 1)?;
            expect(1 + next)?;
            g.layer_norm(x, weight, bias, *eps)?
        }
        Op::RmsNorm { eps, has_weight } => {
            let x = arg(0)?;
            let weight = take(*has_weight, 1)?;
            expect(1 + next)?;
            g.rms_norm(x, weight, *eps)?
        }
        Op::Rope {
            theta,
            interleaved,
            offset,
            rotary_dim,
            has_positions,
            has_inv_freq,
        } => {
            let x = arg(0)?;
            let positions = take(*has_positions, 1)?;
            let inv_freq = take(*has_inv_freq, 1)?;
            expect(1 + next)?;
            let args = RopeArgs {
                positions,
                offset: *offset,
                theta: *theta,
                interleaved: *interleaved,
                inv_freq,
                rotary_dim: *rotary_dim,
            };
            g.rope(x, &args)?
        }
        Op::Attention {
            causal,
            scale,
            has_key_padding_mask,
            has_segments,
            has_append,
        } => {
            let (q, k, v) = (arg(0)?, arg(1)?, arg(2)?);
            let key_padding_mask = take(*has_key_padding_mask, 3)?;
            let segments = take(*has_segments, 3)?;
            let append = match (take(*has_append, 3)?, take(*has_append, 3)?) {
                (Some(ka), Some(va)) => Some((ka, va)),
                _ => None,
            };
            expect(3 + next)?;
            let spec = AttentionSpec {
                causal: *causal,
                scale: *scale,
                key_padding_mask,
                segments,
                append,
            };
            g.attention_with(q, k, v, spec)?
        }
        Op::Embedding => g.embedding(arg(0)?, arg(1)?)?,
        Op::Reshape { dims } => {
            let shape: Vec<Option<Dim>> = dims.iter().cloned().map(Some).collect();
            g.reshape(arg(0)?, &shape)?
        }
        Op::Transpose { perm } => g.transpose(arg(0)?, perm)?,
        Op::Concat { axis } => g.concat(&ins, *axis as isize)?,
        Op::Slice {
            axis,
            start,
            stop,
            step,
        } => g.slice(arg(0)?, *axis as isize, *start, *stop, *step)?,
        Op::Reduce {
            kind,
            axis,
            keepdims,
        } => g.reduce(*kind, arg(0)?, *axis, *keepdims)?,
        Op::Where => g.where_(arg(0)?, arg(1)?, arg(2)?)?,
        Op::MaskedFill { value } => g.masked_fill(arg(0)?, arg(1)?, *value)?,
        Op::TopK {
            k,
            axis,
            largest,
            output,
        } => {
            let (values, indices) = g.topk(arg(0)?, *k, *axis as isize, *largest)?;
            match output {
                TopKOutput::Values => values,
                TopKOutput::Indices => indices,
            }
        }
        Op::Cast { dtype } => g.cast(arg(0)?, *dtype)?,
    };
    // The builder must have made the same op (its attributes are derived from
    // the arguments above, so only a mismatch in kind is possible).
    let made = &g.nodes()[v].op;
    if made.name() != node.op.name() {
        return Err(Error::Internal(format!(
            "rebuilding {} made {}",
            node.op.name(),
            made.name()
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::graph::{Node, TensorType};
    use crate::kernels::frame::epilogue::Activation;
    use crate::tensor::Tensor;

    fn small() -> Graph {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(4)], DType::F32)
            .unwrap();
        let w = g.constant(Tensor::zeros(DType::F32, &[3, 4]).unwrap());
        let b = g.constant(Tensor::zeros(DType::F32, &[3]).unwrap());
        let h = g.linear(x, w, Some(b), Activation::Gelu).unwrap();
        let r = g
            .input("r", vec![Dim::sym("batch"), Dim::Known(3)], DType::F32)
            .unwrap();
        let s = g.add(h, r).unwrap();
        let t = g.transpose(s, &[1, 0]).unwrap();
        g.output("t", t).unwrap();
        g
    }

    fn with_nodes(g: &Graph, edit: impl FnOnce(&mut Vec<Node>)) -> Graph {
        let mut nodes = g.nodes().to_vec();
        edit(&mut nodes);
        Graph::from_parts(nodes, g.inputs().to_vec(), g.outputs().to_vec())
    }

    #[test]
    fn accepts_built_graphs() {
        verify(&small()).unwrap();
    }

    #[test]
    fn rejects_broken_invariants() {
        let g = small();
        let fails = |bad: Graph, want: &str| {
            let e = verify(&bad).unwrap_err();
            assert!(matches!(e, Error::Internal(_)), "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        };
        // A node reading a later value.
        fails(with_nodes(&g, |n| n[3].inputs[0] = 5), "not earlier");
        // A constant with an input.
        fails(with_nodes(&g, |n| n[1].inputs.push(0)), "takes no inputs");
        // A stored type that inference disagrees with.
        fails(
            with_nodes(&g, |n| {
                n[6].out = TensorType::new(DType::F32, vec![Dim::Known(3)])
            }),
            "stored type",
        );
        // An op whose inputs no longer fit.
        fails(with_nodes(&g, |n| n[3].inputs[1] = 2), "no longer fit");
        // Inputs and outputs.
        let dup = Graph::from_parts(
            g.nodes().to_vec(),
            vec![("x".into(), 0), ("x".into(), 0), ("r".into(), 4)],
            g.outputs().to_vec(),
        );
        fails(dup, "two inputs");
        let missing = Graph::from_parts(g.nodes().to_vec(), vec![("x".into(), 0)], vec![]);
        fails(missing, "missing from the graph's inputs");
        let far = Graph::from_parts(
            g.nodes().to_vec(),
            g.inputs().to_vec(),
            vec![("t".into(), 99)],
        );
        fails(far, "past the last node");
    }
}
