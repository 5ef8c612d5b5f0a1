//! Constant folding: a node whose inputs are all constants is computed once,
//! here, on the eager ops (`exec::dispatch::execute`), and becomes a
//! constant. Folding repeats down a chain (`cast(reshape(transpose(W)))`
//! folds to one constant), so weight preparation written into the graph costs
//! nothing per run and the fusions see plain constant weights
//! (`matmul(x, transpose(W))` becomes `matmul(x, W')`).
//!
//! Left alone:
//! - nodes whose type has a symbolic dim (their size is only known at run time);
//! - nodes whose result would be much larger than their inputs (more than
//!   [`MAX_GROWTH`] times, past [`SMALL_BYTES`]): a broadcast such as
//!   `col[4096, 1] + row[1, 4096]` (32 KiB in, 64 MiB out) is cheaper to
//!   compute each run than to keep;
//! - nodes no output needs (DCE drops them);
//! - nodes without inputs (inputs and constants themselves).
//!
//! A transpose of a constant folds to a strided view of the same storage
//! instead of a copy: a constant may have any layout, and the GEMMs read
//! strided weights directly (and pre-packing copies them anyway).

use crate::error::{Error, Result};
use crate::exec::dispatch::execute;
use crate::graph::{Dim, Graph, Node, Op, TensorType};
use crate::tensor::Tensor;

use super::{live, PassOutput, Rebuild};

/// A folded result may be this many times the bytes of its inputs (a cast
/// from bf16 to f32 doubles them)...
pub const MAX_GROWTH: usize = 2;
/// ...or, whatever its inputs, this small.
pub const SMALL_BYTES: usize = 64 * 1024;

/// Folds constant subgraphs; `rewrites` counts the folded nodes.
pub fn run(graph: &Graph) -> Result<PassOutput> {
    let live = live(graph);
    let mut rebuild = Rebuild::new(graph);
    let mut folded = 0;
    for (id, node) in graph.nodes().iter().enumerate() {
        if live[id] {
            let args: Option<Vec<Tensor>> = node
                .inputs
                .iter()
                .map(|&i| match rebuild.node(rebuild.value(i)) {
                    Some(Node {
                        op: Op::Constant(t),
                        ..
                    }) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            if let Some(args) = args.filter(|a| worth_folding(node, a)) {
                let t = evaluate(node, &args)?;
                let c = rebuild.push(Op::Constant(t), vec![], node.out.clone());
                rebuild.replace(id, c);
                folded += 1;
                continue;
            }
        }
        rebuild.copy(id);
    }
    Ok(PassOutput {
        graph: rebuild.finish(),
        rewrites: folded,
    })
}

/// Whether `node`, whose inputs are the constants `args`, should become a constant.
fn worth_folding(node: &Node, args: &[Tensor]) -> bool {
    if node.op.is_external() || args.is_empty() {
        return false;
    }
    let Some(out_bytes) = known_bytes(&node.out) else {
        return false;
    };
    let in_bytes: usize = args.iter().map(|t| t.numel() * t.dtype().size()).sum();
    out_bytes <= SMALL_BYTES.max(in_bytes.saturating_mul(MAX_GROWTH))
}

/// Bytes of a value whose dims are all known.
fn known_bytes(ty: &TensorType) -> Option<usize> {
    ty.dims.iter().try_fold(ty.dtype.size(), |acc, d| match d {
        Dim::Known(n) => acc.checked_mul(*n),
        Dim::Sym(_) => None,
    })
}

/// The value of `node` on constant inputs, checked against its type.
fn evaluate(node: &Node, args: &[Tensor]) -> Result<Tensor> {
    let t = match &node.op {
        Op::Transpose { perm } => args[0].permute(perm)?,
        _ => {
            let refs: Vec<&Tensor> = args.iter().collect();
            execute(node, &refs, &Default::default(), &Default::default())?
        }
    };
    let want: Vec<Dim> = t.shape().iter().map(|&d| Dim::Known(d)).collect();
    if t.dtype() != node.out.dtype || want != node.out.dims {
        return Err(Error::Internal(format!(
            "fold_constants: {} gave {} {:?}, but its type is {}",
            node.op.name(),
            t.dtype(),
            t.shape(),
            node.out
        )));
    }
    // A view shares storage with its inputs: fine, constants are never written.
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::kernels::generic::elementwise::Unary;
    use crate::kernels::testing::uniform;
    use crate::passes::testing::{assert_same_values, count};
    use crate::passes::{dce, optimize};

    fn weight(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_slice(&uniform(n, seed, -1.0, 1.0), shape).unwrap()
    }

    #[test]
    fn folds_weight_preparation_chains() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(6)], DType::F32)
            .unwrap();
        // W stored [out, in] as bf16; the graph casts and transposes it for matmul.
        let w = g.constant(weight(&[5, 6], 3).cast(DType::BF16).unwrap());
        let wf = g.cast(w, DType::F32).unwrap();
        let wt = g.transpose(wf, &[1, 0]).unwrap();
        let y = g.matmul(x, wt).unwrap();
        // exp(c) * 2 folds in two steps.
        let c = g.constant(weight(&[5], 4));
        let e = g.unary(Unary::Exp, c).unwrap();
        let two = g.constant(Tensor::from_slice(&[2f32], &[1]).unwrap());
        let e2 = g.mul(e, two).unwrap();
        let z = g.add(y, e2).unwrap();
        g.output("z", z).unwrap();

        let out = run(&g).unwrap();
        assert_eq!(out.rewrites, 4, "cast, transpose, exp, mul");
        let after = dce::run(&out.graph).unwrap().graph;
        crate::graph::verify::verify(&after).unwrap();
        assert_eq!(count(&after, "constant"), 2);
        assert_eq!(count(&after, "cast") + count(&after, "transpose"), 0);
        assert_eq!(count(&after, "matmul"), 1);
        assert_eq!(after.nodes().len(), 5, "x, W', e2, matmul, add");
        // The GEMM now reads the weight in another layout: same values up to
        // the order of the sums.
        assert_same_values(&g, &after, &[("batch", 3)], 1e-6);
    }

    #[test]
    fn leaves_symbolic_growing_and_input_dependent_nodes() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(4)], DType::F32)
            .unwrap();
        let big = g.constant(Tensor::zeros(DType::F32, &[256, 256]).unwrap());
        let scalar = g.constant(Tensor::from_slice(&[1f32], &[1, 1]).unwrap());
        let col = g.constant(weight(&[256, 1], 5));
        let row = g.constant(weight(&[1, 256], 6));
        // [256, 1] + [1, 256] -> 256 KiB from 2 KiB: stays unfolded.
        let outer = g.add(col, row).unwrap();
        let s = g.sum(outer, None, false).unwrap();
        let shifted = g.add(big, scalar).unwrap(); // same size as `big`: folds.
        let m = g.mean(shifted, None, false).unwrap();
        let y = g.mul(x, x).unwrap();
        let ys = g.add(y, s).unwrap();
        let ym = g.add(ys, m).unwrap();
        g.output("y", ym).unwrap();

        let out = run(&g).unwrap();
        assert_eq!(out.rewrites, 2, "only big + scalar and its mean fold");
        let after = dce::run(&out.graph).unwrap().graph;
        assert_eq!(
            count(&after, "add"),
            3,
            "the outer sum and the two adds of x"
        );
        assert_same_values(&g, &after, &[("batch", 2)], 0.0);
    }

    #[test]
    fn transposed_weight_becomes_a_view_the_linear_reads() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(8)], DType::F32)
            .unwrap();
        let w = weight(&[3, 8], 9);
        let wc = g.constant(w.clone());
        let wt = g.transpose(wc, &[1, 0]).unwrap();
        let y = g.matmul(x, wt).unwrap();
        g.output("y", y).unwrap();
        let folded = run(&g).unwrap().graph;
        let Op::Constant(t) = &folded.nodes()[folded.nodes()[3].inputs[1]].op else {
            panic!("the matmul should read a constant: {:?}", folded.nodes());
        };
        assert!(std::sync::Arc::ptr_eq(t.storage(), w.storage()), "no copy");
        assert_same_values(&g, &folded, &[("batch", 2)], 1e-6);
        let (opt, _) = optimize(&g).unwrap();
        assert_eq!(count(&opt, "linear"), 1);
        assert_same_values(&g, &opt, &[("batch", 2)], 1e-5);
    }
}
