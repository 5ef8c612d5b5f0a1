//! Fusing the work after a GEMM into its epilogue: `linear` computes
//! `act(x · Wᵀ + bias) + residual` while each tile of the product is still in
//! cache, so the bias add, the activation and the residual add stop being
//! separate passes over memory.
//!
//! A chain starts at
//! - a `linear` (its epilogue may already hold a bias or an activation), or
//! - `matmul(x, W)` with W a 2-D constant [in, out] (f32, f16 or bf16): it
//!   becomes a `linear` whose weight is the transposed view `Wᵀ` [out, in]
//!   (no copy; `matmul(x, transpose(W))` of a stored [out, in] weight gives
//!   back W itself once constants are folded),
//!
//! and then takes, in this order, each step the epilogue can still express:
//! 1. `+ b` with b a 1-D f32 value [out] (either operand order): the bias;
//! 2. one of gelu, gelu_tanh, silu, relu (the epilogue's activations);
//! 3. `+ r` with r of exactly the output's type (no broadcasting): the residual.
//!
//! A step is taken only when the value before it is read by that step alone
//! and is not a graph output (otherwise it must exist anyway). Left alone: a
//! bias after the activation or the residual, a second activation,
//! broadcasting adds that are neither a bias nor a residual, matmuls of two
//! activations or by a weight with batch dims.

use std::collections::HashMap;

use crate::dtype::DType;
use crate::error::Result;
use crate::graph::{Graph, Op, TensorType, ValueId};
use crate::kernels::frame::epilogue::Activation;
use crate::kernels::generic::elementwise::{Binary, Unary};
use crate::tensor::Tensor;

use super::{constant_of, live, live_readers, only_read_by, output_mask, PassOutput, Rebuild};

/// Where the fused linear gets its weight.
enum WeightSource {
    /// The weight value of an existing linear.
    Value(ValueId),
    /// A new constant: the transposed view of a matmul's constant weight.
    Transposed(Tensor),
}

/// A linear and the epilogue steps absorbed after it, fused at `tail`.
struct Chain {
    x: ValueId,
    weight: WeightSource,
    bias: Option<ValueId>,
    activation: Activation,
    residual: Option<ValueId>,
    /// How many epilogue steps were absorbed (0 for a bare matmul made a linear).
    steps: usize,
}

/// Fuses epilogue chains; `rewrites` counts the linears made or extended.
pub fn run(graph: &Graph) -> Result<PassOutput> {
    let live = live(graph);
    let readers = live_readers(graph);
    let is_output = output_mask(graph);
    let mut chains: HashMap<ValueId, Chain> = HashMap::new();
    // Nodes absorbed by an earlier chain: `a + b` of two linears' outputs is
    // the residual step of one chain only.
    let mut claimed = vec![false; graph.nodes().len()];
    for id in (0..graph.nodes().len()).filter(|&id| live[id]) {
        let Some(mut chain) = start(graph, id) else {
            continue;
        };
        let mut tail = id;
        while let Some(next) = only_read_by(tail, &readers, &is_output) {
            if claimed[next] || !extend(graph, &mut chain, tail, next) {
                break;
            }
            claimed[next] = true;
            chain.steps += 1;
            tail = next;
        }
        let is_new_linear = matches!(chain.weight, WeightSource::Transposed(_));
        if chain.steps > 0 || is_new_linear {
            chains.insert(tail, chain);
        }
    }
    let rewrites = chains.len();
    let mut rebuild = Rebuild::new(graph);
    for (id, node) in graph.nodes().iter().enumerate() {
        let Some(chain) = chains.remove(&id) else {
            rebuild.copy(id);
            continue;
        };
        let w = match chain.weight {
            WeightSource::Value(w) => rebuild.value(w),
            WeightSource::Transposed(t) => {
                let ty = TensorType::new(t.dtype(), t.shape().iter().map(|&d| d.into()).collect());
                rebuild.push(Op::Constant(t), vec![], ty)
            }
        };
        let mut inputs = vec![rebuild.value(chain.x), w];
        inputs.extend(chain.bias.map(|b| rebuild.value(b)));
        inputs.extend(chain.residual.map(|r| rebuild.value(r)));
        let op = Op::Linear {
            activation: chain.activation,
            has_bias: chain.bias.is_some(),
            has_residual: chain.residual.is_some(),
            packed: None,
        };
        let fused = rebuild.push(op, inputs, node.out.clone());
        rebuild.replace(id, fused);
    }
    Ok(PassOutput {
        graph: rebuild.finish(),
        rewrites,
    })
}

/// The chain a linear or a matmul by a constant weight starts.
fn start(graph: &Graph, id: ValueId) -> Option<Chain> {
    let node = &graph.nodes()[id];
    match &node.op {
        Op::Linear {
            activation,
            has_bias,
            has_residual,
            packed: None,
        } => Some(Chain {
            x: node.inputs[0],
            weight: WeightSource::Value(node.inputs[1]),
            bias: has_bias.then(|| node.inputs[2]),
            activation: *activation,
            residual: has_residual.then(|| node.inputs[2 + usize::from(*has_bias)]),
            steps: 0,
        }),
        Op::MatMul => {
            let w = constant_of(graph, node.inputs[1])?;
            let gemm_weight = matches!(w.dtype(), DType::F32 | DType::F16 | DType::BF16);
            let x = graph.value_type(node.inputs[0]).ok()?;
            if w.ndim() != 2 || !gemm_weight || x.dtype != DType::F32 || x.ndim() == 0 {
                return None;
            }
            Some(Chain {
                x: node.inputs[0],
                weight: WeightSource::Transposed(w.t()),
                bias: None,
                activation: Activation::None,
                residual: None,
                steps: 0,
            })
        }
        _ => None,
    }
}

/// The epilogue activation of a unary op, if it has one.
fn activation_of(op: Unary) -> Option<Activation> {
    match op {
        Unary::Gelu => Some(Activation::Gelu),
        Unary::GeluTanh => Some(Activation::GeluTanh),
        Unary::Silu => Some(Activation::Silu),
        Unary::Relu => Some(Activation::Relu),
        _ => None,
    }
}

/// Absorbs node `next` (which reads the chain's value `tail`) if the epilogue
/// can still express it; returns whether it did.
fn extend(graph: &Graph, chain: &mut Chain, tail: ValueId, next: ValueId) -> bool {
    let nodes = graph.nodes();
    let (node, cur) = (&nodes[next], &nodes[tail].out);
    if node.out != *cur {
        return false;
    }
    match node.op {
        Op::Binary(Binary::Add) => {
            let other = if node.inputs[0] == tail {
                node.inputs[1]
            } else {
                node.inputs[0]
            };
            let ty = &nodes[other].out;
            let out_features = cur.dims.last();
            let is_bias =
                ty.dtype == DType::F32 && ty.ndim() == 1 && ty.dims.last() == out_features;
            let untouched = chain.activation == Activation::None && chain.residual.is_none();
            if is_bias && chain.bias.is_none() && untouched {
                chain.bias = Some(other);
                true
            } else if *ty == *cur && chain.residual.is_none() {
                chain.residual = Some(other);
                true
            } else {
                false
            }
        }
        Op::Unary(u) => match activation_of(u) {
            Some(act) if chain.activation == Activation::None && chain.residual.is_none() => {
                chain.activation = act;
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Dim;
    use crate::kernels::testing::uniform;
    use crate::passes::dce;
    use crate::passes::testing::{assert_same_values, count};

    fn weight(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_slice(&uniform(n, seed, -1.0, 1.0), shape).unwrap()
    }

    fn fused(g: &Graph) -> (Graph, usize) {
        let out = run(g).unwrap();
        let after = dce::run(&out.graph).unwrap().graph;
        crate::graph::verify::verify(&after).unwrap();
        (after, out.rewrites)
    }

    /// The one live linear's op.
    fn linear_op(g: &Graph) -> Op {
        let live = crate::passes::live(g);
        let ops: Vec<&Op> = g
            .nodes()
            .iter()
            .zip(live)
            .filter(|(n, l)| *l && matches!(n.op, Op::Linear { .. }))
            .map(|(n, _)| &n.op)
            .collect();
        assert_eq!(ops.len(), 1, "{:?}", g.nodes());
        ops[0].clone()
    }

    #[test]
    fn matmul_bias_gelu_residual_become_one_linear() {
        let mut g = Graph::new();
        let x = g
            .input(
                "x",
                vec![Dim::sym("batch"), Dim::sym("seq"), Dim::Known(8)],
                DType::F32,
            )
            .unwrap();
        let r = g
            .input(
                "r",
                vec![Dim::sym("batch"), Dim::sym("seq"), Dim::Known(5)],
                DType::F32,
            )
            .unwrap();
        let w = g.constant(weight(&[8, 5], 1)); // [in, out], as numpy code writes x @ W
        let b = g.constant(weight(&[5], 2));
        let h = g.matmul(x, w).unwrap();
        let hb = g.add(b, h).unwrap(); // bias first: either order
        let a = g.unary(Unary::Gelu, hb).unwrap();
        let y = g.add(a, r).unwrap();
        g.output("y", y).unwrap();

        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 1);
        assert_eq!(after.nodes().len(), 5, "x, r, b, Wᵀ, linear");
        assert!(matches!(
            linear_op(&after),
            Op::Linear {
                activation: Activation::Gelu,
                has_bias: true,
                has_residual: true,
                packed: None
            }
        ));
        assert_same_values(&g, &after, &[("batch", 2), ("seq", 3)], 1e-5);
    }

    #[test]
    fn existing_linear_takes_activation_and_residual() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("n"), Dim::Known(6)], DType::F32)
            .unwrap();
        let w = g.constant(weight(&[6, 6], 3).cast(DType::BF16).unwrap());
        let b = g.constant(weight(&[6], 4));
        let h = g.linear(x, w, Some(b), Activation::None).unwrap();
        let a = g.unary(Unary::Silu, h).unwrap();
        let y = g.add(x, a).unwrap(); // residual first
        g.output("y", y).unwrap();
        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 1);
        assert!(matches!(
            linear_op(&after),
            Op::Linear {
                activation: Activation::Silu,
                has_bias: true,
                has_residual: true,
                ..
            }
        ));
        assert_eq!(after.nodes().len(), 4);
        assert_same_values(&g, &after, &[("n", 5)], 1e-5);
    }

    #[test]
    fn stops_where_the_epilogue_cannot_follow() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("n"), Dim::Known(4)], DType::F32)
            .unwrap();
        let w = g.constant(weight(&[3, 4], 5));
        let b = g.constant(weight(&[3], 6));
        // 1. The pre-activation value is also an output: only the bias fuses.
        let h1 = g.linear(x, w, None, Activation::None).unwrap();
        let hb1 = g.add(h1, b).unwrap();
        let a1 = g.unary(Unary::Gelu, hb1).unwrap();
        g.output("pre", hb1).unwrap();
        // 2. Read twice: nothing fuses.
        let h2 = g.linear(x, w, None, Activation::Relu).unwrap();
        let hb2 = g.add(h2, b).unwrap(); // a bias after the activation: not a bias
        let twice = g.add(hb2, hb2).unwrap();
        // 3. tanh is not an epilogue activation; a broadcast [1, 3] add is no residual.
        let h3 = g.linear(x, w, None, Activation::None).unwrap();
        let t3 = g.unary(Unary::Tanh, h3).unwrap();
        let row = g.constant(weight(&[1, 3], 7));
        let h4 = g.linear(x, w, Some(b), Activation::None).unwrap();
        let h4r = g.add(h4, row).unwrap();
        // 4. matmul by a weight with batch dims stays a matmul.
        let w3 = g.constant(weight(&[2, 4, 3], 8));
        let x3 = g
            .input(
                "x3",
                vec![Dim::Known(2), Dim::sym("n"), Dim::Known(4)],
                DType::F32,
            )
            .unwrap();
        let m3 = g.matmul(x3, w3).unwrap();
        let s = g.add(a1, twice).unwrap();
        let s = g.add(s, t3).unwrap();
        let s = g.add(s, h4r).unwrap();
        g.output("y", s).unwrap();
        g.output("m3", m3).unwrap();

        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 1, "only the bias of chain 1");
        assert_eq!(count(&after, "matmul"), 1);
        assert_eq!(count(&after, "tanh"), 1);
        assert_eq!(count(&after, "gelu"), 1);
        assert_eq!(
            count(&after, "add"),
            3 + 3,
            "hb2, twice, h4r and the three of the sum"
        );
        assert_same_values(&g, &after, &[("n", 3)], 1e-5);
    }

    #[test]
    fn a_sum_of_two_linears_is_the_residual_of_one() {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("n"), Dim::Known(4)], DType::F32)
            .unwrap();
        let w1 = g.constant(weight(&[4, 4], 10));
        let w2 = g.constant(weight(&[4, 4], 11));
        // gelu(x W1ᵀ) + x W2ᵀ: both chains reach the add.
        let h1 = g.linear(x, w1, None, Activation::None).unwrap();
        let a1 = g.unary(Unary::Gelu, h1).unwrap();
        let h2 = g.linear(x, w2, None, Activation::None).unwrap();
        let y = g.add(a1, h2).unwrap();
        g.output("y", y).unwrap();
        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 1, "the first chain takes gelu and the add");
        assert_eq!(count(&after, "linear"), 2);
        assert_eq!(count(&after, "add") + count(&after, "gelu"), 0);
        let out = &after.nodes()[after.outputs()[0].1];
        assert!(matches!(
            out.op,
            Op::Linear {
                activation: Activation::Gelu,
                has_residual: true,
                ..
            }
        ));
        assert_same_values(&g, &after, &[("n", 3)], 1e-5);
    }

    #[test]
    fn bare_matmul_by_constant_becomes_linear_on_a_view() {
        let mut g = Graph::new();
        let x = g.input("x", vec![Dim::Known(7)], DType::F32).unwrap(); // 1-D x
        let w = weight(&[7, 4], 9);
        let wc = g.constant(w.clone());
        let y = g.matmul(x, wc).unwrap();
        g.output("y", y).unwrap();
        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 1);
        let lin = &after.nodes()[after.outputs()[0].1];
        let Op::Constant(wt) = &after.nodes()[lin.inputs[1]].op else {
            panic!("weight should be a constant");
        };
        assert_eq!(wt.shape(), [4, 7]);
        assert!(std::sync::Arc::ptr_eq(wt.storage(), w.storage()));
        assert_same_values(&g, &after, &[], 1e-5);
    }
}
