//! Weight pre-packing: the GEMM copies its weight into panels before every
//! product; for a constant weight that copy can be made once, here, and
//! shared by every run (`Op::Linear { packed }`, read as `Weight::Packed`).
//!
//! Packed: linears whose weight input is a constant f32 or bf16 [out, in]
//! tensor, any layout. A weight read by several linears is packed once.
//! Left alone: f16 weights (the packer always widens them to f32 panels,
//! twice their size; bf16 stays bf16 where the CPU has AVX512-BF16), weights
//! computed at run time, matmuls (only `linear` takes a packed weight;
//! `fuse_matmul_epilogue` turns matmuls by constant weights into linears).
//!
//! The weight input stays on the node (it gives the shapes, and the graph
//! keeps its meaning for anything that ignores `packed`), so the original
//! tensor stays referenced next to its packed copy.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::Result;
use crate::graph::{Graph, Op, Prepacked, ValueId};
use crate::ops::matmul::prepack;

use super::{constant_of, live, PassOutput, Rebuild};

/// Packs the constant weights of linears; `rewrites` counts the linears.
pub fn run(graph: &Graph) -> Result<PassOutput> {
    let live = live(graph);
    let mut packs: HashMap<ValueId, Prepacked> = HashMap::new();
    let mut rebuild = Rebuild::new(graph);
    let mut rewrites = 0;
    for (id, node) in graph.nodes().iter().enumerate() {
        let Op::Linear {
            activation,
            has_bias,
            has_residual,
            packed: None,
        } = node.op
        else {
            rebuild.copy(id);
            continue;
        };
        let w = node.inputs[1];
        let packable = constant_of(graph, w)
            .filter(|t| t.ndim() == 2 && matches!(t.dtype(), DType::F32 | DType::BF16));
        let Some(t) = packable.filter(|_| live[id]) else {
            rebuild.copy(id);
            continue;
        };
        let packed = match packs.get(&w) {
            Some(p) => p.clone(),
            None => {
                let p = Prepacked(Arc::new(prepack(t)?));
                packs.insert(w, p.clone());
                p
            }
        };
        let op = Op::Linear {
            activation,
            has_bias,
            has_residual,
            packed: Some(packed),
        };
        rebuild.copy_with_op(id, op);
        rewrites += 1;
    }
    Ok(PassOutput {
        graph: rebuild.finish(),
        rewrites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Dim;
    use crate::kernels::frame::epilogue::Activation;
    use crate::kernels::testing::uniform;
    use crate::passes::testing::assert_same_values;
    use crate::tensor::Tensor;

    fn weight(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_slice(&uniform(n, seed, -1.0, 1.0), shape).unwrap()
    }

    fn packed_at(g: &Graph, v: ValueId) -> Option<Arc<crate::ops::matmul::PackedWeight>> {
        match &g.nodes()[v].op {
            Op::Linear { packed, .. } => packed.as_ref().map(|p| p.0.clone()),
            op => panic!("%{v} is {op:?}"),
        }
    }

    #[test]
    fn packs_constant_weights_once_and_keeps_values() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(33)], DType::F32)
            .unwrap();
        let w = g.constant(weight(&[17, 33], 1));
        let b = g.constant(weight(&[17], 2));
        let wbf = g.constant(weight(&[33, 17], 3).cast(DType::BF16).unwrap());
        let wh = g.constant(weight(&[17, 33], 4).cast(DType::F16).unwrap());
        // A strided view (the transpose of a stored [in, out] matrix).
        let wt = g.constant(weight(&[33, 17], 5).t());
        let runtime_w = g
            .input("w", vec![Dim::Known(17), Dim::Known(33)], DType::F32)
            .unwrap();
        let a = g.linear(x, w, Some(b), Activation::Gelu).unwrap();
        let a2 = g.linear(x, w, None, Activation::None).unwrap(); // same weight: same pack
        let c = g.linear(a, wbf, None, Activation::Relu).unwrap();
        let d = g.linear(c, wh, None, Activation::None).unwrap();
        let e = g
            .linear_residual(x, wt, None, Activation::None, Some(a2))
            .unwrap();
        let f = g.linear(x, runtime_w, None, Activation::None).unwrap();
        let s = g.add(d, e).unwrap();
        let s = g.add(s, f).unwrap();
        g.output("y", s).unwrap();

        let out = run(&g).unwrap();
        assert_eq!(out.rewrites, 4, "a, a2, c, e");
        let after = out.graph;
        crate::graph::verify::verify(&after).unwrap();
        let (pa, pa2) = (
            packed_at(&after, a).unwrap(),
            packed_at(&after, a2).unwrap(),
        );
        assert!(Arc::ptr_eq(&pa, &pa2));
        assert!(packed_at(&after, c).is_some() && packed_at(&after, e).is_some());
        assert!(packed_at(&after, d).is_none(), "f16 stays");
        assert!(packed_at(&after, f).is_none(), "runtime weight");
        assert!(after.nodes()[a].op.attributes().contains("prepacked"));
        assert_same_values(&g, &after, &[("batch", 5)], 1e-5);
        assert_eq!(run(&after).unwrap().rewrites, 0, "nothing left to pack");
    }
}
