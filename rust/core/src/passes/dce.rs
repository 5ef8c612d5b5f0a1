//! Dead code elimination: drops every node that no output needs. Inputs stay
//! (an input nobody reads is still part of the graph's signature), and the
//! survivors keep their order, so the result is still in execution order.

use crate::error::Result;
use crate::graph::{Graph, Op};

use super::{live, PassOutput, Rebuild};

/// Removes the nodes no output needs; `rewrites` counts the removed nodes.
pub fn run(graph: &Graph) -> Result<PassOutput> {
    let live = live(graph);
    let mut rebuild = Rebuild::new(graph);
    let mut removed = 0;
    for (id, node) in graph.nodes().iter().enumerate() {
        if live[id] || matches!(node.op, Op::Input { .. }) {
            rebuild.copy(id);
        } else {
            removed += 1;
        }
    }
    Ok(PassOutput {
        graph: rebuild.finish(),
        rewrites: removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::graph::Dim;
    use crate::kernels::generic::elementwise::Unary;
    use crate::passes::testing::assert_same_values;
    use crate::tensor::Tensor;

    #[test]
    fn removes_unread_nodes_and_keeps_inputs() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(4)], DType::F32)
            .unwrap();
        let unused_input = g.input("unused", vec![Dim::Known(2)], DType::F32).unwrap();
        let c = g.constant(Tensor::from_slice(&[0.5f32; 4], &[4]).unwrap());
        let _dead_constant = g.constant(Tensor::zeros(DType::F32, &[3]).unwrap());
        let y = g.mul(x, c).unwrap();
        let dead = g.unary(Unary::Exp, y).unwrap();
        let _dead_too = g.add(dead, dead).unwrap();
        let _dead_from_input = g.unary(Unary::Neg, unused_input).unwrap();
        let z = g.unary(Unary::Tanh, y).unwrap();
        g.output("z", z).unwrap();
        g.output("y", y).unwrap();

        let out = run(&g).unwrap();
        assert_eq!(out.rewrites, 4);
        let after = out.graph;
        assert_eq!(after.nodes().len(), 5, "x, unused, c, y, z");
        let names: Vec<&str> = after.inputs().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "unused"]);
        let outs: Vec<&str> = after.outputs().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(outs, ["z", "y"]);
        crate::graph::verify::verify(&after).unwrap();
        assert_same_values(&g, &after, &[("batch", 3)], 0.0);
        // A second run finds nothing more to remove.
        assert_eq!(run(&after).unwrap().rewrites, 0);
    }
}
