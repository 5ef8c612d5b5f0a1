//! [`Compiled`]: a graph frozen for execution. It is immutable and `Send +
//! Sync`, so one instance serves many threads; everything a run mutates (the
//! values, the symbol bindings) lives in that run's own frame.
//!
//! A run binds the symbols from the input shapes, takes the memory plan for
//! those dims (made once per shape signature and cached), takes an arena of
//! the planned size from the program's pool, then executes the nodes in order
//! on the eager ops: each node's output allocation is offered its planned
//! arena region, elementwise nodes whose input dies there write over it in
//! place, each intermediate is dropped right after its last reader, and the
//! cancel token is checked between nodes. Outputs are copied out of the arena
//! before it goes back to the pool (see `arena` for the shrink policy).

use std::collections::HashMap;
use std::fmt::Write as _;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::graph::dim::resolve_all;
use crate::graph::{format_dims, Dim, Graph, Node, Op, TensorType, ValueId};
use crate::ops::{binary::binary_in_place, unary::unary_in_place};
use crate::passes::{optimize_with, PassOptions, PassStat};
use crate::plan::{plan, MemoryPlan, Step, ValueInfo, ValueKind};
use crate::shape::numel;
use crate::storage::{with_output_slot, Arena};
use crate::tensor::Tensor;

use super::arena::{RunCache, RunPlan, RunStats};
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
    /// Value whose memory each value shares (itself, or a view's source).
    root: Vec<ValueId>,
    /// Plans per shape signature and idle arenas, shared by clones.
    cache: Arc<RunCache>,
    /// What each optimization pass did (empty when compiled without passes).
    passes: Vec<PassStat>,
}

/// One node's share of the profiled runs (see [`Compiled::profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// The node's id (its value id, as in `summary`).
    pub node: ValueId,
    /// The op's name: `"linear"`, `"rms_norm"`, ...
    pub op: String,
    /// Profiled runs that executed it.
    pub calls: u64,
    /// Time in it over those runs.
    pub seconds: f64,
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
    /// Runs the optimization passes on `graph`, then freezes the result.
    pub fn optimized(graph: &Graph) -> Result<Compiled> {
        Compiled::optimized_with(graph, PassOptions::default())
    }

    /// [`Compiled::optimized`] with the pipeline a device asks for.
    pub fn optimized_with(graph: &Graph, options: PassOptions) -> Result<Compiled> {
        let (better, passes) = optimize_with(graph, options)?;
        let mut c = Compiled::new(&better)?;
        c.passes = passes;
        Ok(c)
    }

    /// What each optimization pass did.
    pub fn pass_stats(&self) -> &[PassStat] {
        &self.passes
    }

    /// Freezes `graph` with its declared outputs, as built (no passes).
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
        let mut root: Vec<ValueId> = (0..n).collect();
        for (id, node) in nodes.iter().enumerate() {
            if is_view(&node.op) {
                root[id] = root[node.inputs[0]];
            }
        }
        Ok(Compiled {
            root,
            cache: Arc::default(),
            passes: Vec::new(),
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

    /// Whether node `id` contributes to some output (a device need not run the others).
    pub fn is_needed(&self, id: ValueId) -> bool {
        self.needed[id]
    }

    /// The last needed node that reads value `id` (after it, the value's memory is free);
    /// None when no needed node reads it.
    pub fn last_use(&self, id: ValueId) -> Option<usize> {
        self.last_use[id]
    }

    /// Whether value `id` is one of the graph's outputs.
    pub fn is_output(&self, id: ValueId) -> bool {
        self.is_output[id]
    }

    /// The values node `id` reads, in input order, from a run's `values` (indexed by value
    /// id; every device's executor keeps one); an internal error names one not live.
    pub fn live_args<'v, T>(&self, id: ValueId, values: &'v [Option<T>]) -> Result<Vec<&'v T>> {
        self.args_by(id, |i| values[i].as_ref())
    }

    /// Value `i` of a CPU run: from `values`, or the tensor a constant node holds.
    fn cpu_value<'v>(&'v self, i: ValueId, values: &'v [Option<Tensor>]) -> Option<&'v Tensor> {
        match (&values[i], &self.nodes[i].op) {
            (Some(t), _) => Some(t),
            (None, Op::Constant(t)) => Some(t),
            _ => None,
        }
    }

    /// [`Compiled::live_args`] for a CPU run, where constants stay in their nodes.
    fn cpu_args<'v>(
        &'v self,
        id: ValueId,
        values: &'v [Option<Tensor>],
    ) -> Result<Vec<&'v Tensor>> {
        self.args_by(id, |i| self.cpu_value(i, values))
    }

    /// Node `id`'s inputs looked up by `value`; an internal error names one not live.
    fn args_by<'v, T>(
        &self,
        id: ValueId,
        value: impl Fn(ValueId) -> Option<&'v T>,
    ) -> Result<Vec<&'v T>> {
        self.nodes[id]
            .inputs
            .iter()
            .map(|&i| {
                value(i).ok_or_else(|| {
                    Error::Internal(format!("node %{id} reads %{i}, which is not live"))
                })
            })
            .collect()
    }

    /// After node `id` has run: drops the values it was the last to read (outputs stay).
    pub fn release_after<T>(&self, id: ValueId, values: &mut [Option<T>]) {
        for &i in &self.nodes[id].inputs {
            if self.last_use[i] == Some(id) && !self.is_output[i] {
                values[i] = None;
            }
        }
    }

    /// Output `name` (value `v`) of a run's `values`; an internal error if it was not computed.
    pub fn output_value<'v, T>(name: &str, v: ValueId, values: &'v [Option<T>]) -> Result<&'v T> {
        values[v]
            .as_ref()
            .ok_or_else(|| Error::Internal(format!("output '{name}' (%{v}) was not computed")))
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

    /// (name, value id) of each input, in declaration order.
    pub fn input_values(&self) -> &[(String, ValueId)] {
        &self.inputs
    }

    /// (name, value id) of each output, in declaration order.
    pub fn output_values(&self) -> &[(String, ValueId)] {
        &self.outputs
    }

    /// Checks the inputs against their declared types and binds the symbols
    /// (what every device's run does first).
    pub fn bind(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, usize>> {
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
        let plan = self.plan_for(&bindings)?;
        let need = plan.memory.planned_bytes;
        let arena = self.cache.take_arena(need)?;
        let mut stats = RunStats::default();
        let result = self.run_in(&arena, &plan, inputs, &bindings, cancel, &mut stats);
        self.cache.give_arena(arena, need, stats);
        result
    }

    /// The cached plan for the bound symbols (made on first use).
    fn plan_for(&self, bindings: &HashMap<String, usize>) -> Result<Arc<RunPlan>> {
        let symbols = self.symbols();
        let key: Vec<usize> = symbols
            .iter()
            .map(|s| bindings.get(s).copied().unwrap_or(0))
            .collect();
        self.cache.plan(key, || self.make_plan(bindings))
    }

    fn run_in(
        &self,
        arena: &Arc<Arena>,
        plan: &RunPlan,
        inputs: &HashMap<String, Tensor>,
        bindings: &HashMap<String, usize>,
        cancel: &CancelToken,
        stats: &mut RunStats,
    ) -> Result<HashMap<String, Tensor>> {
        let offsets = &plan.memory.offsets;
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        let profiling = self.cache.profile.enabled.load(Ordering::Relaxed);
        let mut times: Vec<(usize, u64)> = Vec::new();
        for (id, node) in self.nodes.iter().enumerate() {
            if !self.needed[id] {
                continue;
            }
            // Constants are read where the node holds them (`cpu_value`), not cloned into
            // `values`: a decode step of a 30-layer model skipped 274 such nodes, each
            // touching cold metadata after the weights streamed through the caches
            // (0.3 µs apiece). An output constant still goes through `values`.
            if matches!(node.op, Op::Constant(_)) && !self.is_output[id] {
                continue;
            }
            cancel.check()?;
            let started = profiling.then(Instant::now);
            let planned = offsets[id].filter(|_| plan.bytes[id] > 0);
            let mut out = None;
            // In place: the plan put this elementwise output over its first input,
            // which dies here; the op writes over it if it holds the only handle.
            if let (Some(at), Some(&first)) = (planned, node.inputs.first()) {
                let single = node.inputs.iter().filter(|&&i| i == first).count() == 1;
                if node.op.is_elementwise()
                    && offsets[self.root[first]] == Some(at)
                    && self.last_use[first] == Some(id)
                    && !self.is_output[first]
                    && single
                {
                    if let Some(x) = values[first].take() {
                        let done = match &node.op {
                            Op::Unary(op) => unary_in_place(*op, x),
                            Op::Binary(op) => match self.cpu_value(node.inputs[1], &values) {
                                Some(b) => binary_in_place(*op, x, b),
                                None => Err(x),
                            },
                            _ => Err(x),
                        };
                        match done {
                            Ok(t) => {
                                stats.in_place += 1;
                                out = Some(t);
                            }
                            Err(x) => values[first] = Some(x),
                        }
                    }
                }
            }
            let out = match out {
                Some(t) => t,
                None => {
                    let args = self.cpu_args(id, &values)?;
                    // The op takes the offered region only if no live storage overlaps
                    // it (the arena's registry decides); else it allocates afresh.
                    match planned {
                        Some(at) => {
                            let (t, taken) = with_output_slot(arena, at, plan.bytes[id], || {
                                execute(node, &args, inputs, bindings)
                            });
                            let t = t?;
                            if taken && t.storage().is_in_arena(arena) {
                                stats.in_arena += 1;
                            } else {
                                stats.fallback += 1;
                            }
                            t
                        }
                        None => execute(node, &args, inputs, bindings)?,
                    }
                }
            };
            let want = &plan.shapes[id];
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
            self.release_after(id, &mut values);
            if let Some(t) = started {
                times.push((
                    id,
                    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
                ));
            }
        }
        if profiling {
            self.cache.profile.record(&times);
        }
        // Outputs leave the arena (it is reused by the next run).
        self.outputs
            .iter()
            .map(|(name, v)| {
                let t = Self::output_value(name, *v, &values)?;
                let t = if t.storage().is_arena() {
                    Tensor::from_bytes(t.dtype(), t.shape(), &t.contiguous_bytes()?)?
                } else {
                    t.clone()
                };
                Ok((name.clone(), t))
            })
            .collect()
    }

    /// Turns per-node timing on or off for the runs that start from now on (shared by
    /// every clone of this program). Off, a run pays one flag check; on, two clock reads
    /// per node and one lock per run.
    pub fn set_profiling(&self, on: bool) {
        self.cache.profile.enabled.store(on, Ordering::Relaxed);
    }

    /// Time spent in each node over the profiled runs so far, in graph order: nodes
    /// that never ran are left out. A node's time covers its kernel and the executor's
    /// work around it (output placement, shape check, freeing dead values).
    pub fn profile(&self) -> Vec<NodeTime> {
        self.cache
            .profile
            .snapshot()
            .into_iter()
            .enumerate()
            .filter(|(_, (calls, _))| *calls > 0)
            .map(|(id, (calls, nanos))| NodeTime {
                node: id,
                op: self.nodes[id].op.name().to_owned(),
                calls,
                seconds: nanos as f64 * 1e-9,
            })
            .collect()
    }

    /// Forgets the times measured so far.
    pub fn reset_profile(&self) {
        self.cache.profile.clear();
    }

    /// Idle arena bytes held for the next runs (see `arena` for the policy).
    pub fn arena_bytes(&self) -> usize {
        self.cache.idle_bytes()
    }

    /// Counters over all runs so far.
    pub fn run_stats(&self) -> RunStats {
        self.cache.stats()
    }

    /// Shape signatures planned and cached so far.
    pub fn plans_cached(&self) -> usize {
        self.cache.plans_cached()
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
        Ok(self.make_plan(dims)?.memory)
    }

    /// The plan for concrete dims (uncached). A view (reshape) shares its
    /// source's memory: it is not planned itself, and reading it (or returning
    /// it) keeps the source alive.
    fn make_plan(&self, dims: &HashMap<String, usize>) -> Result<RunPlan> {
        const OP: &str = "memory_plan";
        let mut values = Vec::with_capacity(self.nodes.len());
        let mut bytes_of = Vec::with_capacity(self.nodes.len());
        let mut shapes = Vec::with_capacity(self.nodes.len());
        let mut steps = Vec::new();
        let root_is_output: Vec<bool> = {
            let mut v = vec![false; self.nodes.len()];
            for (_, o) in &self.outputs {
                v[self.root[*o]] = true;
            }
            v
        };
        for (id, node) in self.nodes.iter().enumerate() {
            let shape = resolve_all(&node.out.dims, dims)?;
            let bytes = numel(&shape)?
                .checked_mul(node.out.dtype.size())
                .ok_or_else(|| {
                    Error::shape(OP, format!("%{id} of shape {shape:?} is too large"))
                })?;
            let view = self.root[id] != id;
            let kind = if node.op.is_external() || view {
                ValueKind::External
            } else if root_is_output[id] {
                ValueKind::Output
            } else {
                ValueKind::Intermediate
            };
            bytes_of.push(bytes);
            shapes.push(shape);
            values.push(ValueInfo { bytes, kind });
            if self.needed[id] && !node.op.is_external() && !view {
                steps.push(Step {
                    inputs: node.inputs.iter().map(|&i| self.root[i]).collect(),
                    output: id,
                    in_place: node.op.is_elementwise(),
                });
            }
        }
        Ok(RunPlan {
            memory: plan(&steps, &values)?,
            bytes: bytes_of,
            shapes,
        })
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
        if self.passes.is_empty() {
            let _ = writeln!(s, "passes: none (compiled without optimization)");
        }
        for p in &self.passes {
            let _ = writeln!(s, "pass {p}");
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

/// Ops whose output is a view of their first input (no memory of its own).
fn is_view(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. })
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

    /// x -> [linear -> gelu -> reshape -> add residual -> reshape] x layers.
    fn deep_mlp(layers: usize, width: usize) -> Compiled {
        let mut g = Graph::new();
        let x = g
            .input("x", vec![Dim::sym("batch"), Dim::Known(width)], DType::F32)
            .unwrap();
        let mut h = x;
        for l in 0..layers {
            let data: Vec<f32> = (0..width * width)
                .map(|i| ((i * 7 + l * 13) % 11) as f32 / 11.0 - 0.45)
                .collect();
            let w = g.constant(Tensor::from_slice(&data, &[width, width]).unwrap());
            let y = g.linear(h, w, None, Activation::None).unwrap();
            let y = g.unary(Unary::Gelu, y).unwrap();
            let y = g
                .reshape(
                    y,
                    &[
                        Some(Dim::sym("batch")),
                        Some(Dim::Known(width / 2)),
                        Some(Dim::Known(2)),
                    ],
                )
                .unwrap();
            let hv = g
                .reshape(
                    h,
                    &[
                        Some(Dim::sym("batch")),
                        Some(Dim::Known(width / 2)),
                        Some(Dim::Known(2)),
                    ],
                )
                .unwrap();
            let y = g.add(y, hv).unwrap();
            h = g
                .reshape(y, &[Some(Dim::sym("batch")), Some(Dim::Known(width))])
                .unwrap();
        }
        g.output("y", h).unwrap();
        Compiled::new(&g).unwrap()
    }

    fn eager_deep_mlp(c: &Compiled, x: &Tensor) -> Tensor {
        // The same program node by node, each output freshly allocated.
        let mut values: Vec<Option<Tensor>> = vec![None; c.nodes.len()];
        let inputs = HashMap::from([("x".to_owned(), x.clone())]);
        let b = HashMap::from([("batch".to_owned(), x.shape()[0])]);
        for (id, node) in c.nodes.iter().enumerate() {
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&i| values[i].as_ref().unwrap())
                .collect();
            values[id] = Some(execute(node, &args, &inputs, &b).unwrap());
        }
        values[c.outputs[0].1].clone().unwrap()
    }

    fn run_x(c: &Compiled, x: &Tensor) -> Tensor {
        let out = c
            .run(
                &HashMap::from([("x".to_owned(), x.clone())]),
                &CancelToken::new(),
            )
            .unwrap();
        out["y"].clone()
    }

    fn input(batch: usize, width: usize) -> Tensor {
        let data: Vec<f32> = (0..batch * width)
            .map(|i| ((i * 5) % 17) as f32 / 17.0 - 0.5)
            .collect();
        Tensor::from_slice(&data, &[batch, width]).unwrap()
    }

    #[test]
    fn runs_from_the_planned_arena_with_in_place_steps() {
        let c = deep_mlp(4, 64);
        for batch in [3usize, 33, 3] {
            let x = input(batch, 64);
            let y = run_x(&c, &x);
            assert!(
                !y.storage().is_arena(),
                "outputs are copied out of the arena"
            );
            assert_eq!(
                y.elements::<f32>().unwrap(),
                eager_deep_mlp(&c, &x).elements::<f32>().unwrap()
            );
        }
        let s = c.run_stats();
        assert_eq!(s.runs, 3);
        assert_eq!(s.fallback, 0, "{s:?}");
        // Per layer: linear in the arena, gelu and add in place.
        assert_eq!(s.in_arena, 3 * 4, "{s:?}");
        assert_eq!(s.in_place, 3 * 4 * 2, "{s:?}");
        assert_eq!(c.plans_cached(), 2);
        // Both batch sizes fit the arena of the larger one: only one was mapped.
        assert_eq!(s.arenas_created, 2);
    }

    #[test]
    fn arena_shrinks_after_a_large_run() {
        let c = deep_mlp(2, 256);
        run_x(&c, &input(4096, 256));
        let big = c.arena_bytes();
        assert!(big >= 2 * 4096 * 256 * 4, "{big}");
        for _ in 0..super::super::arena::HISTORY {
            run_x(&c, &input(2, 256));
        }
        let small = c.arena_bytes();
        assert!(
            small <= 64 * 1024,
            "arena stayed at {small} bytes after small runs"
        );
        assert!(c.run_stats().arenas_freed >= 1);
        // And it grows again when needed.
        run_x(&c, &input(4096, 256));
        assert!(c.arena_bytes() >= big);
    }

    #[test]
    fn concurrent_runs_use_separate_arenas() {
        let c = Arc::new(deep_mlp(3, 32));
        let want: Vec<Vec<f32>> = (1..=4)
            .map(|b| {
                eager_deep_mlp(&c, &input(b * 7, 32))
                    .elements::<f32>()
                    .unwrap()
            })
            .collect();
        std::thread::scope(|scope| {
            for t in 0..4usize {
                let (c, want) = (c.clone(), &want);
                scope.spawn(move || {
                    for i in 0..20 {
                        let b = (t + i) % 4;
                        let y = run_x(&c, &input((b + 1) * 7, 32));
                        assert_eq!(y.elements::<f32>().unwrap(), want[b]);
                    }
                });
            }
        });
        assert!(c.arena_bytes() > 0);
    }
}
