//! [`Compiled`]: a graph frozen for execution. It is immutable and `Send +
//! Sync`, so one instance serves many threads; everything a run mutates (the
//! values, the symbol bindings) lives in that run's own frame.
//!
//! A run binds the symbols from the input shapes, then executes the nodes in
//! order by calling the eager ops, dropping each intermediate right after its
//! last reader, and checks the cancel token between nodes.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::graph::dim::resolve_all;
use crate::graph::{format_dims, Dim, Graph, Node, Op, TensorType, ValueId};
use crate::plan::{plan, MemoryPlan, Step, ValueInfo, ValueKind};
use crate::shape::numel;
use crate::tensor::Tensor;

use super::dispatch::execute;
use super::state::CancelToken;

/// A graph ready to run: nodes in execution order plus what a run needs to
/// free values early.
#[derive(Clone, Debug)]
pub struct Compiled {
    nodes: Vec<Node>,
    inputs: Vec<(String, ValueId)>,
    outputs: Vec<(String, ValueId)>,
    /// Whether a node contributes to some output (others are skipped).
    needed: Vec<bool>,
    /// The last needed node reading each value.
    last_use: Vec<Option<usize>>,
    is_output: Vec<bool>,
}

/// A product `coef · sym · sym ...` (FLOP counts over symbolic dims).
struct Monomial {
    coef: u128,
    syms: Vec<String>,
}

impl Monomial {
    fn of(factor: u128, dims: &[&Dim]) -> Monomial {
        let mut m = Monomial {
            coef: factor,
            syms: vec![],
        };
        for d in dims {
            match d {
                Dim::Known(n) => m.coef = m.coef.saturating_mul(*n as u128),
                Dim::Sym(s) => m.syms.push(s.clone()),
            }
        }
        m.syms.sort();
        m
    }
}

impl std::fmt::Display for Monomial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.coef)?;
        for s in &self.syms {
            write!(f, "·{s}")?;
        }
        Ok(())
    }
}

impl Compiled {
    /// Freezes `graph` with its declared outputs.
    pub fn new(graph: &Graph) -> Result<Compiled> {
        if graph.outputs().is_empty() {
            return Err(Error::shape(
                "compile",
                "the graph has no outputs (call output(name, value) first)",
            ));
        }
        let nodes = graph.nodes().to_vec();
        let n = nodes.len();
        let mut needed = vec![false; n];
        let mut is_output = vec![false; n];
        for (_, v) in graph.outputs() {
            needed[*v] = true;
            is_output[*v] = true;
        }
        // Nodes only read earlier values, so one backward sweep marks every ancestor.
        for id in (0..n).rev() {
            if needed[id] {
                for &i in &nodes[id].inputs {
                    needed[i] = true;
                }
            }
        }
        let mut last_use = vec![None; n];
        for (id, node) in nodes.iter().enumerate().filter(|(id, _)| needed[*id]) {
            for &i in &node.inputs {
                last_use[i] = Some(id);
            }
        }
        Ok(Compiled {
            nodes,
            inputs: graph.inputs().to_vec(),
            outputs: graph.outputs().to_vec(),
            needed,
            last_use,
            is_output,
        })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// (name, type) of each input.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, &TensorType)> {
        self.inputs
            .iter()
            .map(|(n, v)| (n.as_str(), &self.nodes[*v].out))
    }

    /// (name, type) of each output.
    pub fn outputs(&self) -> impl Iterator<Item = (&str, &TensorType)> {
        self.outputs
            .iter()
            .map(|(n, v)| (n.as_str(), &self.nodes[*v].out))
    }

    /// Checks the inputs against their declared types and binds the symbols.
    fn bind(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, usize>> {
        const OP: &str = "run";
        if let Some(unknown) = inputs
            .keys()
            .find(|k| !self.inputs.iter().any(|(n, _)| n == *k))
        {
            let names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::shape(
                OP,
                format!(
                    "unknown input '{unknown}'; the graph's inputs are: {}",
                    names.join(", ")
                ),
            ));
        }
        let mut bound: HashMap<String, usize> = HashMap::new();
        let mut bound_by: HashMap<String, String> = HashMap::new();
        for (name, id) in &self.inputs {
            let ty = &self.nodes[*id].out;
            let Some(t) = inputs.get(name) else {
                return Err(Error::shape(OP, format!("missing input '{name}' ({ty})")));
            };
            if t.dtype() != ty.dtype {
                return Err(Error::dtype(
                    OP,
                    format!(
                        "input '{name}' must be {ty}, got {} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            let mismatch = || {
                Error::shape(
                    OP,
                    format!(
                        "input '{name}' must have shape {}, got {:?}",
                        format_dims(&ty.dims),
                        t.shape()
                    ),
                )
            };
            if t.ndim() != ty.ndim() {
                return Err(mismatch());
            }
            for (d, &got) in ty.dims.iter().zip(t.shape()) {
                match d {
                    Dim::Known(n) if *n != got => return Err(mismatch()),
                    Dim::Known(_) => {}
                    Dim::Sym(s) => match bound.get(s) {
                        Some(&v) if v != got => {
                            return Err(Error::shape(
                                OP,
                                format!(
                                    "input '{name}' of shape {:?} has {s} = {got}, but input '{}' set {s} = {v} (declared {})",
                                    t.shape(),
                                    bound_by[s],
                                    format_dims(&ty.dims)
                                ),
                            ))
                        }
                        Some(_) => {}
                        None => {
                            bound.insert(s.clone(), got);
                            bound_by.insert(s.clone(), name.clone());
                        }
                    },
                }
            }
        }
        Ok(bound)
    }

    /// Runs the graph on `inputs` (by name); returns the outputs by name.
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        cancel: &CancelToken,
    ) -> Result<HashMap<String, Tensor>> {
        cancel.check()?;
        let bindings = self.bind(inputs)?;
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for (id, node) in self.nodes.iter().enumerate() {
            if !self.needed[id] {
                continue;
            }
            cancel.check()?;
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&i| {
                    values[i].as_ref().ok_or_else(|| {
                        Error::Internal(format!("node %{id} reads %{i}, which is not live"))
                    })
                })
                .collect::<Result<_>>()?;
            let out = execute(node, &args, inputs, &bindings)?;
            let want = resolve_all(&node.out.dims, &bindings)?;
            if out.shape() != want.as_slice() || out.dtype() != node.out.dtype {
                return Err(Error::Internal(format!(
                    "node %{id} ({}) produced {} {:?}, but its type is {} = {want:?}",
                    node.op.name(),
                    out.dtype(),
                    out.shape(),
                    node.out
                )));
            }
            values[id] = Some(out);
            for &i in &node.inputs {
                if self.last_use[i] == Some(id) && !self.is_output[i] {
                    values[i] = None;
                }
            }
        }
        self.outputs
            .iter()
            .map(|(name, v)| {
                let t = values[*v].clone().ok_or_else(|| {
                    Error::Internal(format!("output '{name}' (%{v}) was not computed"))
                })?;
                Ok((name.clone(), t))
            })
            .collect()
    }

    /// Symbols appearing in the inputs, sorted.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inputs()
            .flat_map(|(_, t)| t.dims.iter())
            .filter_map(|d| match d {
                Dim::Sym(s) => Some(s.clone()),
                Dim::Known(_) => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The arena plan for concrete `dims` (every symbol of the inputs).
    /// Inputs and constants are external; outputs live to the end; elementwise
    /// ops may write over their first input when it dies there.
    pub fn memory_plan(&self, dims: &HashMap<String, usize>) -> Result<MemoryPlan> {
        const OP: &str = "memory_plan";
        let symbols = self.symbols();
        if let Some(extra) = dims.keys().find(|k| !symbols.contains(k)) {
            return Err(Error::shape(
                OP,
                format!(
                    "'{extra}' is not a symbol of the graph (symbols: {})",
                    symbols.join(", ")
                ),
            ));
        }
        if let Some(missing) = symbols.iter().find(|s| !dims.contains_key(*s)) {
            return Err(Error::shape(
                OP,
                format!("symbol '{missing}' needs a value (pass {missing}=...)"),
            ));
        }
        let mut values = Vec::with_capacity(self.nodes.len());
        let mut steps = Vec::new();
        for (id, node) in self.nodes.iter().enumerate() {
            let shape = resolve_all(&node.out.dims, dims)?;
            let bytes = numel(&shape)?
                .checked_mul(node.out.dtype.size())
                .ok_or_else(|| {
                    Error::shape(OP, format!("%{id} of shape {shape:?} is too large"))
                })?;
            let kind = if node.op.is_external() {
                ValueKind::External
            } else if self.is_output[id] {
                ValueKind::Output
            } else {
                ValueKind::Intermediate
            };
            values.push(ValueInfo { bytes, kind });
            if self.needed[id] && !node.op.is_external() {
                steps.push(Step {
                    inputs: node.inputs.clone(),
                    output: id,
                    in_place: node.op.is_elementwise(),
                });
            }
        }
        plan(&steps, &values)
    }

    /// FLOPs of a node as a sum of products over (symbolic) dims, if it has a GEMM.
    fn flops(&self, node: &Node) -> Option<Vec<Monomial>> {
        let ty = |i: usize| &self.nodes[node.inputs[i]].out;
        let out: Vec<&Dim> = node.out.dims.iter().collect();
        match node.op {
            Op::MatMul | Op::Linear { .. } => {
                let a = ty(0);
                let k = if matches!(node.op, Op::Linear { .. }) {
                    ty(1).dims.get(1)?
                } else {
                    a.dims.last()?
                };
                let mut dims = out;
                dims.push(k);
                Some(vec![Monomial::of(2, &dims)])
            }
            Op::Attention { .. } => {
                // q·kᵀ then p·v: 2·b·sq·hq·sk·(d + dv).
                let (q, k) = (ty(0), ty(1));
                let base = [&q.dims[0], &q.dims[1], &q.dims[2], &k.dims[1]];
                let term = |d: &Dim| {
                    let mut dims = base.to_vec();
                    dims.push(d);
                    Monomial::of(2, &dims)
                };
                let (qk, pv) = (term(&q.dims[3]), term(&node.out.dims[3]));
                if qk.syms == pv.syms {
                    Some(vec![Monomial {
                        coef: qk.coef.saturating_add(pv.coef),
                        syms: qk.syms,
                    }])
                } else {
                    Some(vec![qk, pv])
                }
            }
            _ => None,
        }
    }

    /// One line per node (id, op, inputs, output type, FLOPs of GEMM-like
    /// ops), the outputs, and the memory plan with every symbol = 1.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "graph: {} nodes, {} inputs, {} outputs",
            self.nodes.len(),
            self.inputs.len(),
            self.outputs.len()
        );
        for (id, node) in self.nodes.iter().enumerate() {
            let args: Vec<String> = node.inputs.iter().map(|i| format!("%{i}")).collect();
            let _ = if args.is_empty() {
                write!(s, "%{id} = {}", node.op.name())
            } else {
                write!(s, "%{id} = {}({})", node.op.name(), args.join(", "))
            };
            let attrs = node.op.attributes();
            if !attrs.is_empty() {
                let _ = write!(s, " {attrs}");
            }
            let _ = write!(s, " -> {}", node.out);
            if let Some(terms) = self.flops(node) {
                let parts: Vec<String> = terms.iter().map(Monomial::to_string).collect();
                let _ = write!(s, "  flops={}", parts.join(" + "));
            }
            if !self.needed[id] {
                let _ = write!(s, "  (unused)");
            }
            s.push('\n');
        }
        for (name, v) in &self.outputs {
            let _ = writeln!(s, "output '{name}' = %{v}");
        }
        let ones: HashMap<String, usize> = self.symbols().into_iter().map(|s| (s, 1)).collect();
        let at: Vec<String> = {
            let mut v: Vec<String> = ones.keys().map(|k| format!("{k}=1")).collect();
            v.sort();
            v
        };
        match self.memory_plan(&ones) {
            Ok(p) => {
                let _ = writeln!(
                    s,
                    "memory plan at {}: planned_bytes={} lower_bound_bytes={} naive_bytes={} in_place={}",
                    if at.is_empty() { "static dims".to_owned() } else { at.join(", ") },
                    p.planned_bytes,
                    p.lower_bound_bytes,
                    p.naive_bytes,
                    p.in_place
                );
            }
            Err(e) => {
                let _ = writeln!(s, "memory plan: {e}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::kernels::frame::epilogue::Activation;
    use crate::kernels::generic::elementwise::Unary;

    fn assert_send_sync<T: Send + Sync>() {}

    fn mlp() -> (Compiled, Tensor, Tensor) {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(3)], DType::F32)
            .unwrap();
        let w = Tensor::from_slice(&[1f32, 0., 0., 0., 1., 0.], &[2, 3]).unwrap();
        let b = Tensor::from_slice(&[0.5f32, -10.], &[2]).unwrap();
        let (wc, bc) = (g.constant(w.clone()), g.constant(b.clone()));
        let h = g.linear(x, wc, Some(bc), Activation::Relu).unwrap();
        let y = g.add(h, h).unwrap();
        let _unused = g.unary(Unary::Exp, y).unwrap();
        g.output("y", y).unwrap();
        (Compiled::new(&g).unwrap(), w, b)
    }

    #[test]
    fn runs_at_two_batch_sizes() {
        assert_send_sync::<Compiled>();
        let (c, _, _) = mlp();
        for batch in [1usize, 4] {
            let data: Vec<f32> = (0..batch * 3).map(|i| i as f32).collect();
            let x = Tensor::from_slice(&data, &[batch, 3]).unwrap();
            let out = c
                .run(&HashMap::from([("x".to_owned(), x)]), &CancelToken::new())
                .unwrap();
            let y = out["y"].elements::<f32>().unwrap();
            let want: Vec<f32> = (0..batch)
                .flat_map(|r| [2.0 * (data[r * 3] + 0.5), 0.0])
                .collect();
            assert_eq!(y, want);
        }
    }

    #[test]
    fn rejects_bad_inputs_and_cancels() {
        let (c, _, _) = mlp();
        let run = |name: &str, t: Tensor| {
            c.run(&HashMap::from([(name.to_owned(), t)]), &CancelToken::new())
                .unwrap_err()
        };
        let e = run("x", Tensor::zeros(DType::F32, &[2, 4]).unwrap());
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("[batch, 3]"),
            "{e}"
        );
        let e = run("x", Tensor::zeros(DType::F64, &[2, 3]).unwrap());
        assert!(matches!(e, Error::DType { .. }), "{e}");
        let e = run("z", Tensor::zeros(DType::F32, &[2, 3]).unwrap());
        assert!(e.to_string().contains("unknown input 'z'"), "{e}");
        let cancel = CancelToken::new();
        cancel.cancel();
        let x = Tensor::zeros(DType::F32, &[2, 3]).unwrap();
        let e = c
            .run(&HashMap::from([("x".to_owned(), x)]), &cancel)
            .unwrap_err();
        assert!(matches!(e, Error::Cancelled(_)));
    }

    #[test]
    fn memory_plan_and_summary() {
        let (c, _, _) = mlp();
        let p = c
            .memory_plan(&HashMap::from([("batch".to_owned(), 64)]))
            .unwrap();
        assert!(p.planned_bytes <= p.naive_bytes && p.planned_bytes >= p.lower_bound_bytes);
        assert_eq!(p.naive_bytes, 2 * 512);
        assert!(c.memory_plan(&HashMap::new()).is_err());
        let s = c.summary();
        assert!(
            s.contains("linear(%0, %1, %2) activation=relu -> f32[batch, 2]  flops=12·batch"),
            "{s}"
        );
        assert!(
            s.contains("(unused)") && s.contains("planned_bytes="),
            "{s}"
        );
    }
}
