//! Graph rewrites run before a graph is compiled, one rewrite per file. Each
//! pass takes a graph and returns a new one that computes the same outputs
//! (by name) from the same inputs (by name): inputs and outputs survive every
//! pass, even an input that no output reads any more.
//!
//! [`optimize`] runs them in order: DCE first (so nothing is folded or fused
//! for a value nobody reads), then constant folding (which turns transposed
//! and cast weights into constants the fusions can see), CSE, the attention
//! and GEMM-epilogue fusions, weight pre-packing, and DCE again to drop what
//! the rewrites left unread. Fusions replace the last node of a pattern and
//! leave the rest for that final DCE. In debug builds the graph invariants
//! ([`crate::graph::verify`]) are checked after every pass.

pub mod cse;
pub mod dce;
pub mod fold_constants;
pub mod fuse_attention;
pub mod fuse_matmul_epilogue;
pub mod prepack_weights;

use std::fmt;

use crate::error::Result;
use crate::graph::{Graph, Node, Op, TensorType, ValueId};
use crate::tensor::Tensor;

/// What a pass returns: the rewritten graph and how many rewrites it made
/// (nodes removed, constants folded, patterns fused: see the pass).
pub struct PassOutput {
    pub graph: Graph,
    pub rewrites: usize,
}

/// What one pass of [`optimize`] did, for summaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassStat {
    /// The pass (its file name): `"fold_constants"`.
    pub pass: &'static str,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// How many rewrites the pass made, counted in `unit`.
    pub rewrites: usize,
    /// What a rewrite of this pass is: `"constants folded"`.
    pub unit: &'static str,
}

impl fmt::Display for PassStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {} ({} -> {} nodes)",
            self.pass, self.rewrites, self.unit, self.nodes_before, self.nodes_after
        )
    }
}

type PassFn = fn(&Graph) -> Result<PassOutput>;

/// The pipeline of [`optimize`]: (name, unit of its rewrites, pass).
const PIPELINE: &[(&str, &str, PassFn)] = &[
    ("dce", "nodes removed", dce::run),
    ("fold_constants", "constants folded", fold_constants::run),
    ("cse", "duplicates merged", cse::run),
    (
        "fuse_attention",
        "attention patterns fused",
        fuse_attention::run,
    ),
    (
        "fuse_matmul_epilogue",
        "linears made or extended",
        fuse_matmul_epilogue::run,
    ),
    (
        "prepack_weights",
        "weights pre-packed",
        prepack_weights::run,
    ),
    ("dce", "nodes removed", dce::run),
];

/// What a device asks of the pipeline (see [`crate::device::Device::pass_options`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassOptions {
    /// Run `prepack_weights`: only the CPU's GEMM reads packed panels; on any
    /// other device they would be a second, unused host copy of every weight.
    pub prepack_weights: bool,
}

impl Default for PassOptions {
    /// The CPU's pipeline: every pass.
    fn default() -> Self {
        PassOptions {
            prepack_weights: true,
        }
    }
}

/// Runs every pass on `graph`; returns the optimized graph and one stat per pass.
pub fn optimize(graph: &Graph) -> Result<(Graph, Vec<PassStat>)> {
    optimize_with(graph, PassOptions::default())
}

/// [`optimize`] with the passes `options` leaves out skipped (and not listed).
pub fn optimize_with(graph: &Graph, options: PassOptions) -> Result<(Graph, Vec<PassStat>)> {
    check(graph, "none (the graph as built)")?;
    let mut graph = graph.clone();
    let mut stats = Vec::with_capacity(PIPELINE.len());
    for &(pass, unit, run) in PIPELINE {
        if pass == "prepack_weights" && !options.prepack_weights {
            continue;
        }
        let nodes_before = graph.nodes().len();
        let out = run(&graph)?;
        check(&out.graph, pass)?;
        stats.push(PassStat {
            pass,
            nodes_before,
            nodes_after: out.graph.nodes().len(),
            rewrites: out.rewrites,
            unit,
        });
        graph = out.graph;
    }
    Ok((graph, stats))
}

/// The graph invariants after `pass`, in debug builds only (release trusts the passes).
fn check(graph: &Graph, pass: &str) -> Result<()> {
    #[cfg(debug_assertions)]
    crate::graph::verify::verify(graph).map_err(|e| {
        let detail = match e {
            crate::Error::Internal(m) => m,
            other => other.to_string(),
        };
        crate::Error::Internal(format!("pass {pass} broke the graph: {detail}"))
    })?;
    #[cfg(not(debug_assertions))]
    let _ = (graph, pass);
    Ok(())
}

/// Whether each node contributes to some output.
pub(crate) fn live(graph: &Graph) -> Vec<bool> {
    let nodes = graph.nodes();
    let mut live = vec![false; nodes.len()];
    for &(_, v) in graph.outputs() {
        live[v] = true;
    }
    // Nodes only read earlier values, so one backward sweep marks every ancestor.
    for id in (0..nodes.len()).rev() {
        if live[id] {
            for &i in &nodes[id].inputs {
                live[i] = true;
            }
        }
    }
    live
}

/// Readers of each value among the live nodes, once per edge (a node that
/// reads a value twice is listed twice).
pub(crate) fn live_readers(graph: &Graph) -> Vec<Vec<ValueId>> {
    let live = live(graph);
    let mut readers = vec![Vec::new(); graph.nodes().len()];
    for (id, node) in graph.nodes().iter().enumerate() {
        if live[id] {
            for &i in &node.inputs {
                readers[i].push(id);
            }
        }
    }
    readers
}

/// Whether each value is a graph output.
pub(crate) fn output_mask(graph: &Graph) -> Vec<bool> {
    let mut out = vec![false; graph.nodes().len()];
    for &(_, v) in graph.outputs() {
        out[v] = true;
    }
    out
}

/// The value read only by `reader`, once, and not an output: what a fusion
/// may swallow, since nothing else needs it.
pub(crate) fn only_read_by(
    v: ValueId,
    readers: &[Vec<ValueId>],
    is_output: &[bool],
) -> Option<ValueId> {
    match readers[v].as_slice() {
        [r] if !is_output[v] => Some(*r),
        _ => None,
    }
}

/// The tensor of `v` when it is a constant.
pub(crate) fn constant_of(graph: &Graph, v: ValueId) -> Option<&Tensor> {
    match &graph.nodes().get(v)?.op {
        Op::Constant(t) => Some(t),
        _ => None,
    }
}

/// A rewritten copy of a graph, built in node order: each old node is copied,
/// dropped or replaced by new nodes, and `map` sends each old value to the
/// new value that stands for it. New nodes may read only values already
/// mapped, so the copy stays in execution order.
pub(crate) struct Rebuild<'g> {
    old: &'g Graph,
    nodes: Vec<Node>,
    map: Vec<Option<ValueId>>,
}

impl<'g> Rebuild<'g> {
    pub(crate) fn new(old: &'g Graph) -> Self {
        Rebuild {
            old,
            nodes: Vec::with_capacity(old.nodes().len()),
            map: vec![None; old.nodes().len()],
        }
    }

    /// The new value standing for old value `v`. Passes map values in order,
    /// so an unmapped one is a bug in the pass; it maps to an id past the
    /// end, which the graph invariants (and `Compiled`) reject.
    pub(crate) fn value(&self, v: ValueId) -> ValueId {
        debug_assert!(
            self.map[v].is_some(),
            "value %{v} read before it was mapped"
        );
        self.map[v].unwrap_or(usize::MAX)
    }

    /// The node of a new value.
    pub(crate) fn node(&self, v: ValueId) -> Option<&Node> {
        self.nodes.get(v)
    }

    /// Appends a node whose inputs are new values; returns its value.
    pub(crate) fn push(&mut self, op: Op, inputs: Vec<ValueId>, out: TensorType) -> ValueId {
        self.nodes.push(Node { op, inputs, out });
        self.nodes.len() - 1
    }

    /// Copies old node `v` with its inputs mapped, replacing its op by `op`.
    pub(crate) fn copy_with_op(&mut self, v: ValueId, op: Op) -> ValueId {
        let node = &self.old.nodes()[v];
        let inputs = node.inputs.iter().map(|&i| self.value(i)).collect();
        let new = self.push(op, inputs, node.out.clone());
        self.map[v] = Some(new);
        new
    }

    /// Copies old node `v` with its inputs mapped.
    pub(crate) fn copy(&mut self, v: ValueId) -> ValueId {
        let op = self.old.nodes()[v].op.clone();
        self.copy_with_op(v, op)
    }

    /// From now on old value `v` is new value `new`.
    pub(crate) fn replace(&mut self, v: ValueId, new: ValueId) {
        self.map[v] = Some(new);
    }

    /// The new graph, with the old inputs and outputs mapped.
    pub(crate) fn finish(self) -> Graph {
        let remap = |list: &[(String, ValueId)]| -> Vec<(String, ValueId)> {
            list.iter()
                .map(|(name, v)| (name.clone(), self.value(*v)))
                .collect()
        };
        let inputs = remap(self.old.inputs());
        let outputs = remap(self.old.outputs());
        Graph::from_parts(self.nodes, inputs, outputs)
    }
}

/// Helpers of the pass tests: random inputs and a before/after comparison.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    use crate::dtype::DType;
    use crate::exec::{CancelToken, Compiled};
    use crate::graph::dim::resolve_all;
    use crate::graph::Graph;
    use crate::kernels::testing::uniform;
    use crate::tensor::Tensor;

    /// Random values in [-1, 1) for every input of `graph` under `dims`
    /// (integer inputs get values in 0..4, bool inputs those cast to bool).
    pub fn random_inputs(
        graph: &Graph,
        dims: &[(&str, usize)],
        seed: u64,
    ) -> HashMap<String, Tensor> {
        let bindings: HashMap<String, usize> =
            dims.iter().map(|&(k, v)| (k.to_owned(), v)).collect();
        graph
            .inputs()
            .iter()
            .enumerate()
            .map(|(i, (name, v))| {
                let ty = graph.value_type(*v).unwrap();
                let shape = resolve_all(&ty.dims, &bindings).unwrap();
                let n: usize = shape.iter().product();
                let data = uniform(n, seed + i as u64, -1.0, 1.0);
                let t = Tensor::from_slice(&data, &shape).unwrap();
                let t = match ty.dtype {
                    DType::F32 => t,
                    d if d.is_float() => t.cast(d).unwrap(),
                    d => {
                        let ids: Vec<f32> = data.iter().map(|x| (x.abs() * 4.0).floor()).collect();
                        Tensor::from_slice(&ids, &shape).unwrap().cast(d).unwrap()
                    }
                };
                (name.clone(), t)
            })
            .collect()
    }

    /// The outputs of `graph` on `inputs`, by name, as f32 values.
    pub fn outputs(graph: &Graph, inputs: &HashMap<String, Tensor>) -> HashMap<String, Vec<f32>> {
        let out = Compiled::new(graph)
            .unwrap()
            .run(inputs, &CancelToken::new())
            .unwrap();
        out.into_iter()
            .map(|(k, t)| {
                let shape = t.shape().to_vec();
                let v = t.cast(DType::F32).unwrap().elements::<f32>().unwrap();
                assert_eq!(v.len(), shape.iter().product::<usize>());
                (k, v)
            })
            .collect()
    }

    /// Asserts `before` and `after` give the same outputs on random inputs,
    /// within `tol` (absolute, plus `tol` relative to the value); 0 = bit-exact.
    pub fn assert_same_values(before: &Graph, after: &Graph, dims: &[(&str, usize)], tol: f32) {
        assert_same_values_with(before, after, dims, tol, &[]);
    }

    /// [`assert_same_values`] with the inputs named in `fixed` given rather
    /// than random (attention masks of 0s and 1s, ids in range).
    pub fn assert_same_values_with(
        before: &Graph,
        after: &Graph,
        dims: &[(&str, usize)],
        tol: f32,
        fixed: &[(&str, Tensor)],
    ) {
        for seed in [1u64, 7] {
            let mut inputs = random_inputs(before, dims, seed);
            for (name, t) in fixed {
                let slot = inputs.get_mut(*name);
                *slot.unwrap_or_else(|| panic!("'{name}' is no input of the graph")) = t.clone();
            }
            let (a, b) = (outputs(before, &inputs), outputs(after, &inputs));
            assert_eq!(a.len(), b.len());
            for (name, want) in &a {
                let got = &b[name];
                assert_eq!(got.len(), want.len(), "output '{name}'");
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    let ok = if tol == 0.0 {
                        g.to_bits() == w.to_bits()
                    } else {
                        (g - w).abs() <= tol * (1.0 + w.abs())
                    };
                    assert!(
                        ok,
                        "output '{name}'[{i}]: {g} after vs {w} before (tol {tol})"
                    );
                }
            }
        }
    }

    /// How many live nodes (ones some output needs) run `name`, an op name
    /// such as "linear".
    pub fn count(graph: &Graph, name: &str) -> usize {
        let live = super::live(graph);
        graph
            .nodes()
            .iter()
            .zip(live)
            .filter(|(n, live)| *live && n.op.name() == name)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_same_values, count};
    use super::*;
    use crate::dtype::DType;
    use crate::graph::Dim;
    use crate::kernels::frame::epilogue::Activation;
    use crate::kernels::generic::elementwise::Unary;
    use crate::kernels::testing::uniform;

    const DIM: usize = 32;
    const HEADS: usize = 4;
    const HEAD_DIM: usize = DIM / HEADS;

    fn weight(g: &mut Graph, shape: &[usize], seed: u64) -> ValueId {
        let n = shape.iter().product();
        let scale = 1.0 / (shape[shape.len() - 1] as f32).sqrt();
        g.constant(Tensor::from_slice(&uniform(n, seed, -scale, scale), shape).unwrap())
    }

    /// `x @ W.T + b` written three ways, as exporters and hand-written code do.
    fn projection(g: &mut Graph, x: ValueId, out: usize, seed: u64, style: u8) -> ValueId {
        let inp = *g.value_type(x).unwrap().dims.last().unwrap() == Dim::Known(DIM);
        let in_f = if inp { DIM } else { 4 * DIM };
        let b = weight(g, &[out], seed + 1);
        match style {
            0 => {
                let w = weight(g, &[out, in_f], seed);
                g.linear(x, w, Some(b), Activation::None).unwrap()
            }
            1 => {
                let w = weight(g, &[out, in_f], seed);
                let wt = g.transpose(w, &[1, 0]).unwrap();
                let h = g.matmul(x, wt).unwrap();
                g.add(h, b).unwrap()
            }
            _ => {
                let w = weight(g, &[in_f, out], seed);
                let h = g.matmul(x, w).unwrap();
                g.add(b, h).unwrap()
            }
        }
    }

    fn heads(g: &mut Graph, x: ValueId) -> ValueId {
        let shape = [
            Some(Dim::sym("batch")),
            Some(Dim::sym("seq")),
            Some(Dim::Known(HEADS)),
            Some(Dim::Known(HEAD_DIM)),
        ];
        let r = g.reshape(x, &shape).unwrap();
        g.transpose(r, &[0, 2, 1, 3]).unwrap()
    }

    /// A pre-norm transformer block as a model loader would write it op by op.
    fn block() -> Graph {
        let mut g = Graph::new();
        let x = g
            .input(
                "x",
                vec![Dim::sym("batch"), Dim::sym("seq"), Dim::Known(DIM)],
                DType::F32,
            )
            .unwrap();
        let (ln_w, ln_b) = (weight(&mut g, &[DIM], 1), weight(&mut g, &[DIM], 2));
        // The loader normalizes once for q and once for k/v: CSE merges them.
        let hq = g.layer_norm(x, Some(ln_w), Some(ln_b), 1e-5).unwrap();
        let hkv = g.layer_norm(x, Some(ln_w), Some(ln_b), 1e-5).unwrap();
        let q = projection(&mut g, hq, DIM, 10, 0);
        let k = projection(&mut g, hkv, DIM, 20, 1);
        let v = projection(&mut g, hkv, DIM, 30, 2);
        let (qh, kh, vh) = (heads(&mut g, q), heads(&mut g, k), heads(&mut g, v));
        let kt = g.transpose(kh, &[0, 1, 3, 2]).unwrap();
        let s = g.matmul(qh, kt).unwrap();
        let c = g.constant(Tensor::from_slice(&[1.0 / (HEAD_DIM as f32).sqrt()], &[1]).unwrap());
        let s = g.mul(s, c).unwrap();
        let p = g.softmax(s, -1).unwrap();
        let ctx = g.matmul(p, vh).unwrap();
        let ctx = g.transpose(ctx, &[0, 2, 1, 3]).unwrap();
        let ctx = g
            .reshape(
                ctx,
                &[
                    Some(Dim::sym("batch")),
                    Some(Dim::sym("seq")),
                    Some(Dim::Known(DIM)),
                ],
            )
            .unwrap();
        let o = projection(&mut g, ctx, DIM, 40, 1);
        let o = g.add(o, x).unwrap();
        let (ln2_w, ln2_b) = (weight(&mut g, &[DIM], 3), weight(&mut g, &[DIM], 4));
        let h2 = g.layer_norm(o, Some(ln2_w), Some(ln2_b), 1e-5).unwrap();
        let m = projection(&mut g, h2, 4 * DIM, 50, 1);
        let m = g.unary(Unary::Gelu, m).unwrap();
        let y = projection(&mut g, m, DIM, 60, 2);
        let y = g.add(o, y).unwrap();
        g.output("y", y).unwrap();
        g
    }

    #[test]
    fn optimizes_a_transformer_block() {
        let g = block();
        let (opt, stats) = optimize(&g).unwrap();
        crate::graph::verify::verify(&opt).unwrap();
        let report: Vec<String> = stats.iter().map(PassStat::to_string).collect();
        let names: Vec<&str> = stats.iter().map(|s| s.pass).collect();
        assert_eq!(
            names,
            [
                "dce",
                "fold_constants",
                "cse",
                "fuse_attention",
                "fuse_matmul_epilogue",
                "prepack_weights",
                "dce"
            ]
        );
        let rewrites = |pass: &str| stats.iter().find(|s| s.pass == pass).unwrap().rewrites;
        assert_eq!(
            rewrites("fold_constants"),
            3,
            "the transposed weights: {report:?}"
        );
        assert_eq!(rewrites("cse"), 1, "{report:?}");
        assert_eq!(rewrites("fuse_attention"), 1, "{report:?}");
        assert_eq!(rewrites("prepack_weights"), 6, "{report:?}");

        assert_eq!(count(&opt, "attention"), 1);
        assert_eq!(count(&opt, "linear"), 6);
        assert_eq!(count(&opt, "layer_norm"), 2);
        assert_eq!(
            count(&opt, "reshape"),
            4,
            "q, k, v into heads and the context back"
        );
        for gone in ["matmul", "softmax", "transpose", "add", "mul", "gelu"] {
            assert_eq!(count(&opt, gone), 0, "{gone} left: {report:?}");
        }
        let linears: Vec<&Op> = opt
            .nodes()
            .iter()
            .map(|n| &n.op)
            .filter(|op| matches!(op, Op::Linear { .. }))
            .collect();
        let all_packed_with_bias = linears.iter().all(|op| {
            matches!(
                op,
                Op::Linear {
                    has_bias: true,
                    packed: Some(_),
                    ..
                }
            )
        });
        assert!(all_packed_with_bias, "{linears:?}");
        let with = |f: fn(&Op) -> bool| linears.iter().filter(|op| f(op)).count();
        assert_eq!(
            with(|op| matches!(
                op,
                Op::Linear {
                    has_residual: true,
                    ..
                }
            )),
            2
        );
        assert_eq!(
            with(|op| matches!(
                op,
                Op::Linear {
                    activation: Activation::Gelu,
                    ..
                }
            )),
            1
        );
        assert_eq!(opt.nodes().len(), stats.last().unwrap().nodes_after);
        // x, 16 constants (6 weights, 6 biases, 2 norms' weight and bias),
        // 2 layer norms, 6 linears, 4 reshapes, 1 attention; from 51.
        assert_eq!(opt.nodes().len(), 30, "{report:?}");
        assert_same_values(&g, &opt, &[("batch", 2), ("seq", 5)], 1e-4);
        // Optimizing again changes nothing more.
        let (again, _) = optimize(&opt).unwrap();
        assert_eq!(again.nodes().len(), opt.nodes().len());
    }

    #[test]
    fn a_device_without_prepacking_skips_that_pass() {
        let g = block();
        let options = PassOptions {
            prepack_weights: false,
        };
        let (opt, stats) = optimize_with(&g, options).unwrap();
        assert!(stats.iter().all(|s| s.pass != "prepack_weights"));
        assert!(!opt.nodes().iter().any(|n| matches!(
            n.op,
            Op::Linear {
                packed: Some(_),
                ..
            }
        )));
        assert_same_values(&g, &opt, &[("batch", 2), ("seq", 5)], 1e-4);
    }

    #[test]
    fn inputs_and_outputs_survive() {
        let mut g = Graph::new();
        let x = g.input("x", vec![Dim::Known(3)], DType::F32).unwrap();
        let _unused = g.input("unused", vec![Dim::Known(3)], DType::F32).unwrap();
        let c = g.constant(Tensor::from_slice(&[1f32, 2., 3.], &[3]).unwrap());
        let c2 = g.unary(Unary::Exp, c).unwrap();
        g.output("x_itself", x).unwrap();
        g.output("folded", c2).unwrap();
        g.output("folded_again", c2).unwrap();
        let (opt, stats) = optimize(&g).unwrap();
        let names: Vec<&str> = opt.inputs().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "unused"]);
        let outs: Vec<&str> = opt.outputs().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(outs, ["x_itself", "folded", "folded_again"]);
        assert_eq!(opt.nodes().len(), 3, "x, unused, exp(c) folded: {stats:?}");
        assert_same_values(&g, &opt, &[], 0.0);
    }
}
