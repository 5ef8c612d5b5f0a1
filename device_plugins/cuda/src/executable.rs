//! A compiled program prepared for the GPU: constants uploaded once, each run
//! executes the nodes in order on the device, intermediates placed in one
//! device arena at the offsets of the program's memory plan.
//!
//! A run binds the symbols from the input shapes, takes the plan for those
//! dims (made once per shape signature, cached), grows the arena to the
//! planned size if needed, uploads the inputs, queues one or a few kernels per
//! node (views such as reshape cost nothing), and downloads the outputs, which
//! waits for the stream. The plan's in-place steps (an elementwise output over
//! its dying first input) are safe on the GPU too: each thread reads element i
//! before writing element i.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rtserve_core::device::Executable;
use rtserve_core::exec::{CancelToken, Compiled};
use rtserve_core::graph::dim::resolve_all;
use rtserve_core::graph::{Dim, Op};
use rtserve_core::plan::MemoryPlan;
use rtserve_core::{Error, Result, Tensor};

use crate::gpu::{Gpu, GpuBuffer};
use crate::ops::{self, DVal, NodeAux};

pub struct CudaExecutable {
    gpu: Arc<Gpu>,
    program: Compiled,
    /// Each constant's device copy; the host tensor is held so its address
    /// (the weight cache's key) stays this tensor's while the copy is used.
    consts: Vec<Option<(Arc<GpuBuffer>, Tensor)>>,
    aux: Vec<NodeAux>,
    symbols: Vec<String>,
    has_embedding: bool,
    plans: Mutex<HashMap<Vec<usize>, Arc<MemoryPlan>>>,
    arena: Mutex<Option<GpuBuffer>>,
}

impl CudaExecutable {
    pub fn new(gpu: Arc<Gpu>, program: &Compiled) -> Result<CudaExecutable> {
        let nodes = program.nodes();
        let n = nodes.len();
        let _guard = gpu.lock()?;
        let mut consts = Vec::with_capacity(n);
        let mut aux = Vec::with_capacity(n);
        for (id, node) in nodes.iter().enumerate() {
            let mut node_aux = NodeAux::default();
            let mut constant = None;
            if program.is_needed(id) {
                let dtype = node
                    .inputs
                    .first()
                    .map_or(node.out.dtype, |&i| nodes[i].out.dtype);
                if !ops::supports(&node.op, dtype) {
                    return Err(Error::Unsupported(format!(
                        "cuda device: {} on {dtype} (node %{id})",
                        node.op.described()
                    )));
                }
                match &node.op {
                    Op::Constant(t) => constant = Some((gpu.weight(t)?, t.clone())),
                    Op::Rope {
                        theta,
                        rotary_dim,
                        has_inv_freq: false,
                        ..
                    } => {
                        let head_dim = match node.out.dims.get(3) {
                            Some(Dim::Known(d)) => *d,
                            _ => {
                                return Err(Error::Unsupported(
                                    "cuda device: rope needs a known head_dim".into(),
                                ))
                            }
                        };
                        let rd = rotary_dim.unwrap_or(head_dim);
                        let freqs: Vec<u8> = (0..rd / 2)
                            .map(|i| theta.powf(-((2 * i) as f64) / rd as f64))
                            .flat_map(f64::to_le_bytes)
                            .collect();
                        node_aux.inv_freq = Some(Arc::new(gpu.upload(&freqs)?));
                    }
                    _ => {}
                }
            }
            consts.push(constant);
            aux.push(node_aux);
        }
        Ok(CudaExecutable {
            has_embedding: nodes
                .iter()
                .enumerate()
                .any(|(id, n)| program.is_needed(id) && matches!(n.op, Op::Embedding)),
            symbols: program.symbols(),
            gpu: gpu.clone(),
            program: program.clone(),
            consts,
            aux,
            plans: Mutex::new(HashMap::new()),
            arena: Mutex::new(None),
        })
    }

    fn plan_for(&self, bindings: &HashMap<String, usize>) -> Result<Arc<MemoryPlan>> {
        let key: Vec<usize> = self
            .symbols
            .iter()
            .map(|s| bindings.get(s).copied().unwrap_or(0))
            .collect();
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = plans.get(&key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(self.program.memory_plan(bindings)?);
        if plans.len() >= 64 {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

impl Executable for CudaExecutable {
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        cancel: &CancelToken,
    ) -> Result<HashMap<String, Tensor>> {
        cancel.check()?;
        let bindings = self.program.bind(inputs)?;
        let plan = self.plan_for(&bindings)?;
        let gpu = &*self.gpu;
        let _guard = gpu.lock()?;
        let mut arena = self.arena.lock().unwrap_or_else(|p| p.into_inner());
        if arena.as_ref().is_none_or(|a| a.bytes < plan.planned_bytes) {
            *arena = None;
            *arena = Some(gpu.alloc(plan.planned_bytes)?);
        }
        let base = arena.as_ref().map_or(0, |a| a.address);
        let bad_ids = if self.has_embedding {
            Some(gpu.upload(&[0u8; 4])?)
        } else {
            None
        };
        let nodes = self.program.nodes();
        let mut values: Vec<Option<DVal>> = vec![None; nodes.len()];
        for (id, node) in nodes.iter().enumerate() {
            if !self.program.is_needed(id) {
                continue;
            }
            cancel.check()?;
            let shape = resolve_all(&node.out.dims, &bindings)?;
            let value = match &node.op {
                Op::Input { name } => {
                    let t = inputs
                        .get(name)
                        .ok_or_else(|| Error::Internal(format!("input '{name}' vanished")))?;
                    let buf = gpu.upload(&t.contiguous_bytes()?)?;
                    DVal {
                        address: buf.address,
                        dtype: t.dtype(),
                        shape,
                        owner: Some(Arc::new(buf)),
                    }
                }
                Op::Constant(t) => {
                    let (buf, _) = self.consts[id]
                        .as_ref()
                        .ok_or_else(|| Error::Internal(format!("constant %{id} not uploaded")))?;
                    DVal {
                        address: buf.address,
                        dtype: t.dtype(),
                        shape,
                        owner: Some(buf.clone()),
                    }
                }
                Op::Reshape { .. } => {
                    let src = values[node.inputs[0]].as_ref().ok_or_else(|| {
                        Error::Internal(format!("reshape %{id} reads a dead value"))
                    })?;
                    DVal {
                        shape,
                        ..src.clone()
                    }
                }
                _ => {
                    let bytes = shape.iter().product::<usize>() * node.out.dtype.size();
                    let out = match plan.offsets[id] {
                        Some(offset) if bytes > 0 && offset + bytes <= plan.planned_bytes => DVal {
                            address: base + offset as u64,
                            dtype: node.out.dtype,
                            shape,
                            owner: None,
                        },
                        _ => ops::temp(gpu, node.out.dtype, &shape)?,
                    };
                    let args = self.program.live_args(id, &values)?;
                    let flag = bad_ids.as_ref().map_or(0, |b| b.address);
                    ops::execute(gpu, node, &args, &out, &self.aux[id], flag)?;
                    out
                }
            };
            values[id] = Some(value);
            self.program.release_after(id, &mut values);
        }
        let mut outputs = HashMap::new();
        for (name, v) in self.program.output_values() {
            let value = Compiled::output_value(name, *v, &values)?;
            let mut bytes = vec![0u8; value.bytes()];
            gpu.download(value.address, &mut bytes)?;
            outputs.insert(
                name.clone(),
                Tensor::from_bytes(value.dtype, &value.shape, &bytes)?,
            );
        }
        if let Some(flag) = &bad_ids {
            let mut bad = [0u8; 4];
            gpu.download(flag.address, &mut bad)?;
            if bad != [0; 4] {
                return Err(Error::index(
                    "embedding",
                    "an id is outside [0, vocab) (cuda device)",
                ));
            }
        }
        gpu.synchronize()?;
        Ok(outputs)
    }
}
