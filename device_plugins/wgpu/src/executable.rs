//! A compiled program prepared for the GPU: pipelines compiled and constants
//! uploaded once at prepare; each run uploads the inputs, queues every node's
//! kernels in one compute pass (views such as reshape cost nothing), and reads
//! the outputs back in one copy. Intermediates live in pooled device buffers
//! that return to the pool at their last use and are kept across runs.

use std::collections::HashMap;
use std::sync::Arc;

use rtserve_core::device::Executable;
use rtserve_core::exec::{CancelToken, Compiled};
use rtserve_core::graph::dim::resolve_all;
use rtserve_core::graph::Op;
use rtserve_core::{DType, Error, Result, Tensor};

use crate::gpu::{Gpu, GpuBuf, Pool, Recorder};
use crate::kernels::Kernel;
use crate::ops::{self, DVal, NodeAux};

pub struct WgpuExecutable {
    gpu: Arc<Gpu>,
    program: Compiled,
    /// Each needed constant's device copy.
    consts: Vec<Option<DVal>>,
    aux: Vec<NodeAux>,
    pool: Arc<Pool>,
}

/// The dtype a node's `supports` check uses: its first input's, else its own.
fn input_dtype(program: &Compiled, id: usize) -> DType {
    let nodes = program.nodes();
    nodes[id]
        .inputs
        .first()
        .map_or(nodes[id].out.dtype, |&i| nodes[i].out.dtype)
}

impl WgpuExecutable {
    pub fn new(gpu: Arc<Gpu>, program: &Compiled) -> Result<WgpuExecutable> {
        let nodes = program.nodes();
        let n = nodes.len();
        // Every op is checked before anything is uploaded: no silent fallback.
        for (id, node) in nodes
            .iter()
            .enumerate()
            .filter(|(id, n)| program.is_needed(*id) && !n.op.is_external())
        {
            let dtype = input_dtype(program, id);
            let f64_anywhere = node.out.dtype == DType::F64
                || node
                    .inputs
                    .iter()
                    .any(|&i| nodes[i].out.dtype == DType::F64);
            if !ops::supports(&node.op, dtype) || f64_anywhere {
                return Err(Error::Unsupported(format!(
                    "wgpu device: {} on {} (node %{id}); the wgpu device has no f64, no integer arithmetic and no packed-sequence attention",
                    node.op.described(),
                    if f64_anywhere { DType::F64 } else { dtype }
                )));
            }
        }
        let _guard = gpu.lock();
        gpu.checked("preparing the program", || {
            for k in Kernel::ALL {
                gpu.pipeline(k)?;
            }
            let mut consts = Vec::with_capacity(n);
            let mut aux = Vec::with_capacity(n);
            for (id, node) in nodes.iter().enumerate() {
                let mut node_aux = NodeAux::default();
                let mut constant = None;
                if program.is_needed(id) {
                    match &node.op {
                        Op::Constant(t) => constant = Some(upload(&gpu, t)?),
                        Op::MaskedFill { value } => {
                            let t = Tensor::from_slice(&[*value], &[1])?.cast(node.out.dtype)?;
                            node_aux.fill = Some(upload(&gpu, &t)?);
                        }
                        _ => {}
                    }
                }
                consts.push(constant);
                aux.push(node_aux);
            }
            Ok(WgpuExecutable {
                gpu: gpu.clone(),
                program: program.clone(),
                consts,
                aux,
                pool: Arc::new(Pool::default()),
            })
        })
    }
}

fn upload(gpu: &Gpu, t: &Tensor) -> Result<DVal> {
    Ok(DVal {
        buf: Arc::new(GpuBuf::owned(gpu.upload(&t.contiguous_bytes()?)?)),
        dtype: t.dtype(),
        shape: t.shape().to_vec(),
    })
}

impl Executable for WgpuExecutable {
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        cancel: &CancelToken,
    ) -> Result<HashMap<String, Tensor>> {
        cancel.check()?;
        let bindings = self.program.bind(inputs)?;
        let gpu = &*self.gpu;
        let _guard = gpu.lock();
        gpu.checked("running the program", || {
            let mut rec = Recorder::new(gpu, self.pool.clone());
            let bad_ids = rec.temp(4)?;
            gpu.write(&bad_ids.buffer, &[0u8; 4]);
            let nodes = self.program.nodes();
            let mut values: Vec<Option<DVal>> = vec![None; nodes.len()];
            // Inputs first: queued writes land before any of the run's work, so
            // they must not go to a buffer that earlier work still reads.
            for (id, node) in nodes.iter().enumerate() {
                if let (Op::Input { name }, true) = (&node.op, self.program.is_needed(id)) {
                    let t = inputs
                        .get(name)
                        .ok_or_else(|| Error::Internal(format!("input '{name}' vanished")))?;
                    let bytes = t.contiguous_bytes()?;
                    let buf = rec.temp(bytes.len())?;
                    gpu.write(&buf.buffer, &bytes);
                    values[id] = Some(DVal {
                        buf,
                        dtype: t.dtype(),
                        shape: t.shape().to_vec(),
                    });
                }
            }
            for (id, node) in nodes.iter().enumerate() {
                if !self.program.is_needed(id) || matches!(node.op, Op::Input { .. }) {
                    continue;
                }
                cancel.check()?;
                let shape = resolve_all(&node.out.dims, &bindings)?;
                let value = match &node.op {
                    Op::Constant(_) => self.consts[id]
                        .clone()
                        .ok_or_else(|| Error::Internal(format!("constant %{id} not uploaded")))?,
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
                        let out = rec.value(node.out.dtype, &shape)?;
                        let args = self.program.live_args(id, &values)?;
                        ops::execute(&mut rec, node, &args, &out, &self.aux[id], &bad_ids.buffer)?;
                        out
                    }
                };
                values[id] = Some(value);
                self.program.release_after(id, &mut values);
            }
            let mut wanted = Vec::new();
            for (name, v) in self.program.output_values() {
                let value = Compiled::output_value(name, *v, &values)?.clone();
                wanted.push((name.clone(), value));
            }
            let encoder = rec.encode();
            let mut parts: Vec<(&wgpu::Buffer, usize)> = wanted
                .iter()
                .map(|(_, v)| (&v.buf.buffer, v.bytes()))
                .collect();
            parts.push((&bad_ids.buffer, 4));
            let read = gpu.read_back(encoder, &parts);
            drop(parts);
            drop(values);
            self.pool.end_run();
            let mut bytes = read?;
            if bytes.pop().is_some_and(|flag| flag != [0; 4]) {
                return Err(Error::index(
                    "embedding",
                    "an id is outside [0, vocab) (wgpu device)",
                ));
            }
            wanted
                .iter()
                .zip(bytes)
                .map(|((name, v), b)| {
                    Ok((name.clone(), Tensor::from_bytes(v.dtype, &v.shape, &b)?))
                })
                .collect()
        })
    }
}
