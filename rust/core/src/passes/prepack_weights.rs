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
//!
//! Graphs that pack the same constant tensor share one packed copy while any of
//! them lives (see [`shared_prepack`]): a decoder's prefill and decode graphs read
//! the same weights, which were packed once per graph before (twice the memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::dtype::DType;
use crate::error::Result;
use crate::graph::{Graph, Op, Prepacked, ValueId};
use crate::kernels::dispatch::{isa, Isa};
use crate::ops::matmul::{prepack, PackedWeight};
use crate::storage::Storage;
use crate::tensor::Tensor;

/// A tensor's identity for packing: its storage's address, view and dtype, and the ISA
/// tier f32 panels were laid out for (bf16 k-pair panels are the same at every tier).
type PackKey = (usize, usize, Vec<usize>, Vec<isize>, DType, Option<Isa>);

/// A packed weight and the storage it was packed from. The weak storage handle keeps
/// the storage's allocation from being freed and its address reused while the entry
/// lives, so an address names one storage.
struct SharedPack {
    storage: Weak<Storage>,
    packed: Weak<PackedWeight>,
}

/// `prepack(t)`, shared with every other graph that packed the same view of the same
/// storage and still holds the result. (Packing reads the tensor once: a constant whose
/// memory is changed in place after a graph packed it is not packed again.)
fn shared_prepack(t: &Tensor) -> Result<Arc<PackedWeight>> {
    static SHARED: OnceLock<Mutex<HashMap<PackKey, SharedPack>>> = OnceLock::new();
    let key: PackKey = (
        Arc::as_ptr(t.storage()) as usize,
        t.offset(),
        t.shape().to_vec(),
        t.strides().to_vec(),
        t.dtype(),
        (t.dtype() != DType::BF16).then(isa),
    );
    let shared = SHARED.get_or_init(Default::default);
    if let Ok(map) = shared.lock() {
        if let Some(entry) = map.get(&key) {
            if let (Some(storage), Some(packed)) = (entry.storage.upgrade(), entry.packed.upgrade())
            {
                if Arc::ptr_eq(&storage, t.storage()) {
                    return Ok(packed);
                }
            }
        }
    }
    let packed = Arc::new(prepack(t)?);
    if let Ok(mut map) = shared.lock() {
        map.retain(|_, e| e.packed.strong_count() > 0);
        map.insert(
            key,
            SharedPack {
                storage: Arc::downgrade(t.storage()),
                packed: Arc::downgrade(&packed),
            },
        );
    }
    Ok(packed)
}

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
                let p = Prepacked(shared_prepack(t)?);
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

    #[test]
    fn graphs_packing_the_same_constant_share_one_pack() {
        let build = |w: &Tensor| {
            let mut g = Graph::new();
            let x = g
                .input("x", vec![Dim::sym("batch"), Dim::Known(40)], DType::F32)
                .unwrap();
            let wc = g.constant(w.clone());
            let y = g.linear(x, wc, None, Activation::None).unwrap();
            g.output("y", y).unwrap();
            (run(&g).unwrap().graph, y)
        };
        let w = weight(&[24, 40], 9);
        let (g1, y1) = build(&w);
        let (g2, y2) = build(&w);
        let (p1, p2) = (packed_at(&g1, y1).unwrap(), packed_at(&g2, y2).unwrap());
        assert!(Arc::ptr_eq(&p1, &p2), "same storage and view: one pack");
        // Equal values in another storage, or another view of this one: packed apart.
        let (g3, y3) = build(&weight(&[24, 40], 9));
        assert!(!Arc::ptr_eq(&p1, &packed_at(&g3, y3).unwrap()));
        let (g4, y4) = build(&w.cast(DType::BF16).unwrap());
        assert!(!Arc::ptr_eq(&p1, &packed_at(&g4, y4).unwrap()));
        // The share holds no strong reference: once no graph holds the pack, it is freed,
        // and packing the same tensor again packs afresh.
        drop((g1, g2, p1));
        assert_eq!(Arc::strong_count(&p2), 1, "only this handle is left");
        drop(p2);
        let (g5, y5) = build(&w);
        let p5 = packed_at(&g5, y5).unwrap();
        assert_eq!(Arc::strong_count(&p5), 2, "held by g5 and p5 only");
    }
}
