//! Common-subexpression elimination: nodes with the same op, attributes and
//! inputs compute the same value, so readers of the later ones read the first.
//!
//! Constants are the same when they are the same view of the same storage
//! (dtype, layout and buffer), never by comparing contents: comparing every
//! weight would cost more than it saves, and two equal weights loaded from
//! two tensors of a file are rare. Inputs are never merged (each is a name).
//! The merged duplicates are left unread for DCE.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Result;
use crate::graph::{Graph, Op, ValueId};

use super::{PassOutput, Rebuild};

/// Merges duplicate nodes; `rewrites` counts the nodes merged away.
pub fn run(graph: &Graph) -> Result<PassOutput> {
    let mut rebuild = Rebuild::new(graph);
    let mut seen: HashMap<String, ValueId> = HashMap::new();
    let mut merged = 0;
    for (id, node) in graph.nodes().iter().enumerate() {
        let key = match &node.op {
            Op::Input { .. } => None,
            Op::Constant(t) => Some(format!(
                "constant {:p} {} {:?}",
                Arc::as_ptr(t.storage()),
                t.dtype(),
                t.layout()
            )),
            // Debug prints every field of the op (f64s round-trip), so equal
            // strings mean equal ops; the inputs are the rewritten ones, so
            // duplicates of duplicates merge in one sweep.
            op => {
                let inputs: Vec<ValueId> = node.inputs.iter().map(|&i| rebuild.value(i)).collect();
                Some(format!("{op:?} {inputs:?} {}", node.out))
            }
        };
        match key {
            Some(key) => match seen.get(&key) {
                Some(&first) => {
                    rebuild.replace(id, first);
                    merged += 1;
                }
                None => {
                    let new = rebuild.copy(id);
                    seen.insert(key, new);
                }
            },
            None => {
                rebuild.copy(id);
            }
        }
    }
    Ok(PassOutput {
        graph: rebuild.finish(),
        rewrites: merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::graph::Dim;
    use crate::kernels::frame::epilogue::Activation;
    use crate::kernels::generic::elementwise::Unary;
    use crate::passes::testing::{assert_same_values, count};
    use crate::tensor::Tensor;

    #[test]
    fn merges_identical_nodes_but_not_different_ones() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(4)], DType::F32)
            .unwrap();
        let x2 = g
            .input("x2", vec![Dim::sym("batch"), Dim::Known(4)], DType::F32)
            .unwrap();
        let w = Tensor::from_slice(&[0.25f32; 12], &[3, 4]).unwrap();
        let w1 = g.constant(w.clone());
        let w2 = g.constant(w.clone()); // same storage and layout: one constant
        let w_copy = g.constant(Tensor::from_slice(&[0.25f32; 12], &[3, 4]).unwrap());
        let a = g.linear(x, w1, None, Activation::None).unwrap();
        let b = g.linear(x, w2, None, Activation::None).unwrap(); // duplicate of a
        let c = g.linear(x, w_copy, None, Activation::None).unwrap(); // other storage
        let d = g.linear(x, w1, None, Activation::Relu).unwrap(); // other attribute
        let e = g.linear(x2, w1, None, Activation::None).unwrap(); // other input
        let ea = g.unary(Unary::Exp, a).unwrap();
        let eb = g.unary(Unary::Exp, b).unwrap(); // duplicate once a == b
        let s1 = g.add(ea, eb).unwrap();
        let s2 = g.add(s1, c).unwrap();
        let s3 = g.add(s2, d).unwrap();
        let s4 = g.add(s3, e).unwrap();
        g.output("y", s4).unwrap();
        g.output("b", eb).unwrap();

        let out = run(&g).unwrap();
        assert_eq!(out.rewrites, 3, "w2, b and exp(b)");
        let after = crate::passes::dce::run(&out.graph).unwrap().graph;
        crate::graph::verify::verify(&after).unwrap();
        assert_eq!(count(&after, "linear"), 4);
        assert_eq!(count(&after, "exp"), 1);
        assert_eq!(count(&after, "constant"), 2);
        let (_, b_out) = &after.outputs()[1];
        assert!(matches!(after.nodes()[*b_out].op, Op::Unary(Unary::Exp)));
        assert_same_values(&g, &after, &[("batch", 3)], 0.0);
        assert_eq!(run(&after).unwrap().rewrites, 0);
    }

    #[test]
    fn different_views_of_one_storage_stay_apart() {
        let mut g = Graph::new();
        let x = g.input("x", vec![Dim::Known(4)], DType::F32).unwrap();
        let w = Tensor::from_slice(&[1f32, 2., 3., 4.], &[2, 2]).unwrap();
        let a = g.constant(w.reshape(&[4]).unwrap());
        let b = g.constant(w.t().reshape(&[4]).unwrap()); // a copy (transposed order)
        let c = g.constant(
            w.index(&[crate::IndexItem::Ellipsis])
                .unwrap()
                .reshape(&[4])
                .unwrap(),
        );
        let xa = g.mul(x, a).unwrap();
        let xb = g.mul(x, b).unwrap();
        let xc = g.mul(x, c).unwrap();
        let s = g.add(xa, xb).unwrap();
        let s = g.add(s, xc).unwrap();
        g.output("y", s).unwrap();
        let out = run(&g).unwrap();
        assert_eq!(out.rewrites, 2, "c is the same view as a, so xc is xa");
        assert_same_values(&g, &out.graph, &[], 0.0);
    }
}
