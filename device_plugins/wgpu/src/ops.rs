//! One graph node on the GPU: each arm maps an op onto the WGSL kernels with
//! the node's attributes, writing the node's output buffer.
//!
//! Math kernels compute in f32. f16 and bf16 inputs are widened to f32 first
//! and the result narrowed back (as the CPU's eager ops do); data movement
//! (copy, select, gather) and casts handle every dtype but f64, which WGSL lacks.

use std::sync::Arc;

use rtserve_core::graph::{Node, Op, TopKOutput};
use rtserve_core::ops::reduce::Reduce;
use rtserve_core::shape::{around, normalize_axis};
use rtserve_core::{DType, Error, Result};

use crate::gpu::{GpuBuf, Recorder};
use crate::kernels::{binary_code, dtype_code, unary_code, Kernel};

/// A value on the device: contiguous, row-major, at the start of `buf`.
#[derive(Clone)]
pub struct DVal {
    pub buf: Arc<GpuBuf>,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl DVal {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    fn buffer(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }
}

/// Most dims a strided kernel indexes (after size-1 dims are dropped and
/// contiguous neighbours merged).
const MAX_DIMS: usize = 6;
const GROUP: usize = 64;

fn unsupported(detail: String) -> Error {
    Error::Unsupported(format!("wgpu device: {detail}"))
}

/// Whether the wgpu device runs `op` on inputs of `dtype`. Everything the CPU
/// runs except f64 anywhere (WGSL has no f64) and integer arithmetic
/// (binary, unary, reductions and top-k are float-only here).
pub fn supports(op: &Op, dtype: DType) -> bool {
    if dtype == DType::F64 || matches!(op, Op::Cast { dtype: DType::F64 }) {
        return false;
    }
    match op {
        Op::Input { .. } | Op::Constant(_) => true,
        // Packed sequences (attention segments) and keys appended beside a cache run on
        // the CPU only so far.
        Op::Attention {
            has_segments: true, ..
        }
        | Op::Attention {
            has_append: true, ..
        } => false,
        Op::Embedding
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Where
        | Op::MaskedFill { .. }
        | Op::Cast { .. } => true,
        // Activations f32; the weight may be f32, f16 or bf16 (read as such by the GEMM).
        Op::MatMul | Op::Linear { .. } => dtype == DType::F32,
        _ => dtype.is_float(),
    }
}

/// Per-node data the executable keeps across runs.
#[derive(Default)]
pub struct NodeAux {
    /// masked_fill's value in the node's dtype (one element).
    pub fill: Option<DVal>,
}

fn threads_groups(threads: usize) -> usize {
    threads.div_ceil(GROUP)
}

/// Output words of `n` elements of `dtype` (the byte-generic kernels' threads).
fn words(n: usize, dtype: DType) -> usize {
    (n * dtype.size()).div_ceil(4)
}

fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| unsupported(format!("{what} of {v} (WGSL indexes with 32 bits)")))
}

fn code(d: DType) -> Result<u32> {
    dtype_code(d).ok_or_else(|| unsupported(format!("{d} tensors (WGSL has no 64-bit floats)")))
}

impl Recorder<'_> {
    /// A fresh pooled value of `dtype` and `shape`.
    pub fn value(&self, dtype: DType, shape: &[usize]) -> Result<DVal> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        Ok(DVal {
            buf: self.temp(bytes)?,
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// Converts `x` into `dst` (same shape).
    pub fn cast_into(&mut self, x: &DVal, dst: &DVal) -> Result<()> {
        let n = x.numel();
        let params = [u(n, "cast")?, code(x.dtype)?, code(dst.dtype)?];
        self.dispatch(
            Kernel::Cast,
            &params,
            &[x.buffer(), dst.buffer()],
            threads_groups(words(n, dst.dtype)),
        )
    }

    /// `x` as `dtype`: itself, or a converted copy.
    pub fn as_dtype(&mut self, x: &DVal, dtype: DType) -> Result<DVal> {
        if x.dtype == dtype {
            return Ok(x.clone());
        }
        let out = self.value(dtype, &x.shape)?;
        self.cast_into(x, &out)?;
        Ok(out)
    }

    /// Runs `f` on an f32 destination: `out` itself, or a scratch value cast into `out`.
    fn via_f32(
        &mut self,
        out: &DVal,
        f: impl FnOnce(&mut Self, &DVal) -> Result<()>,
    ) -> Result<()> {
        if out.dtype == DType::F32 {
            return f(self, out);
        }
        let scratch = self.value(DType::F32, &out.shape)?;
        f(self, &scratch)?;
        self.cast_into(&scratch, out)
    }
}

/// The core's row-major strides, as the kernels' 64-bit integers.
fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    rtserve_core::shape::contiguous_strides(shape)
        .into_iter()
        .map(|s| s as i64)
        .collect()
}

/// The core's broadcast strides (numpy, right-aligned), as the kernels' 64-bit integers.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    rtserve_core::shape::broadcast_strides(shape, out)
        .into_iter()
        .map(|s| s as i64)
        .collect()
}

/// (shape, one stride list per operand) with size-1 dims dropped and
/// mergeable neighbours merged, at most `max` dims.
fn merged(
    op: &str,
    shape: &[usize],
    operands: &[Vec<i64>],
    max: usize,
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    let mut dims: Vec<(usize, Vec<i64>)> = Vec::new();
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let st: Vec<i64> = operands.iter().map(|o| o[d]).collect();
        if let Some((n, prev)) = dims.last_mut() {
            if prev
                .iter()
                .zip(&st)
                .all(|(&p, &s)| p == s * shape[d] as i64)
            {
                *n *= shape[d];
                *prev = st;
                continue;
            }
        }
        dims.push((shape[d], st));
    }
    if dims.len() > max {
        return Err(unsupported(format!(
            "{op} over {} non-mergeable dims (at most {max}): shape {shape:?}",
            dims.len()
        )));
    }
    let sizes = dims
        .iter()
        .map(|(n, _)| u(*n, op))
        .collect::<Result<Vec<_>>>()?;
    // Negative strides (reversed slices) wrap in u32 arithmetic, as in the kernels.
    let strides = (0..operands.len())
        .map(|k| dims.iter().map(|(_, st)| st[k] as i32 as u32).collect())
        .collect();
    Ok((sizes, strides))
}

/// `words` padded to `len` with zeros.
fn padded(words: &[u32], len: usize) -> Vec<u32> {
    let mut v = words.to_vec();
    v.resize(len, 0);
    v
}

/// numpy's first index of `x[start::step]` along an axis of length `len`.
pub fn slice_begin(len: isize, start: Option<isize>, step: isize) -> isize {
    let (lower, upper) = if step < 0 { (-1, len - 1) } else { (0, len) };
    match start {
        None => {
            if step < 0 {
                upper
            } else {
                lower
            }
        }
        Some(s) if s < 0 => (s + len).max(lower),
        Some(s) => s.min(upper),
    }
}

/// Writes node `node`'s output into `out` (allocated, shape resolved).
/// `bad_ids` is the run's flag buffer for out-of-range embedding ids.
pub fn execute(
    rec: &mut Recorder<'_>,
    node: &Node,
    args: &[&DVal],
    out: &DVal,
    aux: &NodeAux,
    bad_ids: &wgpu::Buffer,
) -> Result<()> {
    let arg = |i: usize| {
        args.get(i)
            .copied()
            .ok_or_else(|| Error::Internal(format!("{} lacks its input {i}", node.op.name())))
    };
    let optional = |present: bool, i: usize| present.then(|| arg(i)).transpose();
    if out.numel() == 0 {
        return Ok(());
    }
    match &node.op {
        Op::Input { .. } | Op::Constant(_) | Op::Reshape { .. } => Err(Error::Internal(format!(
            "{} is not executed by a kernel",
            node.op.name()
        ))),
        Op::MatMul => matmul(rec, arg(0)?, arg(1)?, out),
        Op::Linear {
            activation,
            has_bias,
            has_residual,
            ..
        } => {
            let w = arg(1)?;
            let bias = optional(*has_bias, 2)?;
            let residual = optional(*has_residual, 2 + usize::from(*has_bias))?;
            let x = rec.as_dtype(arg(0)?, DType::F32)?;
            let w = rec.gemm_operand(w)?;
            let bias = bias.map(|b| rec.as_dtype(b, DType::F32)).transpose()?;
            let residual = residual.map(|r| rec.as_dtype(r, DType::F32)).transpose()?;
            let k = w.shape.get(1).copied().unwrap_or(1);
            let n = w.shape.first().copied().unwrap_or(1);
            let m = x.numel() / k.max(1);
            let act = match activation {
                rtserve_core::kernels::frame::epilogue::Activation::None => 0,
                rtserve_core::kernels::frame::epilogue::Activation::Gelu => 1,
                rtserve_core::kernels::frame::epilogue::Activation::GeluTanh => 2,
                rtserve_core::kernels::frame::epilogue::Activation::Silu => 3,
                rtserve_core::kernels::frame::epilogue::Activation::Relu => 4,
            };
            let gemm = Gemm {
                m,
                n,
                k,
                a_ms: k,
                a_ks: 1,
                b_ks: 1,
                b_ns: k,
                activation: act,
                batch: (vec![], vec![], vec![]),
                b_dtype: gemm_dtype(w.dtype),
            };
            rec.via_f32(out, |rec, y| {
                gemm.run(rec, &x, &w, bias.as_ref(), residual.as_ref(), y)
            })
        }
        Op::Binary(op) => {
            let (a, b) = (arg(0)?, arg(1)?);
            let (sizes, strides) = merged(
                op.name(),
                &out.shape,
                &[
                    broadcast_strides(&a.shape, &out.shape),
                    broadcast_strides(&b.shape, &out.shape),
                ],
                MAX_DIMS,
            )?;
            let a = rec.as_dtype(a, DType::F32)?;
            let b = rec.as_dtype(b, DType::F32)?;
            let n = out.numel();
            let mut params = vec![u(n, "binary")?, binary_code(*op), sizes.len() as u32];
            params.extend(padded(&sizes, 6));
            params.extend(padded(&strides[0], 6));
            params.extend(padded(&strides[1], 6));
            rec.via_f32(out, |rec, y| {
                rec.dispatch(
                    Kernel::Binary,
                    &params,
                    &[a.buffer(), b.buffer(), y.buffer()],
                    threads_groups(n),
                )
            })
        }
        Op::Unary(op) => {
            let x = rec.as_dtype(arg(0)?, DType::F32)?;
            let n = out.numel();
            let params = [u(n, "unary")?, unary_code(*op)];
            rec.via_f32(out, |rec, y| {
                rec.dispatch(
                    Kernel::Unary,
                    &params,
                    &[x.buffer(), y.buffer()],
                    threads_groups(n),
                )
            })
        }
        Op::Softmax { axis, log } => {
            let x = arg(0)?;
            let axis = normalize_axis("softmax", *axis, x.shape.len())?;
            let (outer, n, inner) = around(&x.shape, axis);
            let x = rec.as_dtype(x, DType::F32)?;
            let params = [
                u(outer, "softmax")?,
                u(n, "softmax")?,
                u(inner, "softmax")?,
                u32::from(*log),
            ];
            rec.via_f32(out, |rec, y| {
                rec.dispatch(
                    Kernel::Softmax,
                    &params,
                    &[x.buffer(), y.buffer()],
                    outer * inner,
                )
            })
        }
        Op::LayerNorm {
            eps,
            has_weight,
            has_bias,
        } => {
            let w = optional(*has_weight, 1)?;
            let b = optional(*has_bias, 1 + usize::from(*has_weight))?;
            norm(rec, arg(0)?, w, b, *eps, false, out)
        }
        Op::RmsNorm { eps, has_weight } => norm(
            rec,
            arg(0)?,
            optional(*has_weight, 1)?,
            None,
            *eps,
            true,
            out,
        ),
        Op::Rope {
            theta,
            interleaved,
            offset,
            rotary_dim,
            has_positions,
            has_inv_freq,
        } => {
            let x = arg(0)?;
            let &[_, seq, heads, dim] = x.shape.as_slice() else {
                return Err(Error::shape(
                    "rope",
                    format!("x must be [batch, seq, heads, head_dim], got {:?}", x.shape),
                ));
            };
            let rd = rotary_dim.unwrap_or(dim);
            let positions = optional(*has_positions, 1)?
                .map(|p| rec.as_dtype(p, DType::I32))
                .transpose()?;
            let per_batch = positions.as_ref().is_some_and(|p| p.shape.len() == 2);
            let given = optional(*has_inv_freq, 1 + usize::from(*has_positions))?;
            // inv_freq as f32 hi + lo from f64 (the given tensor is used as is).
            let (hi, lo) = match given {
                Some(f) => (rec.as_dtype(f, DType::F32)?, None),
                None => {
                    let freqs: Vec<f64> = (0..rd / 2)
                        .map(|i| theta.powf(-((2 * i) as f64) / rd as f64))
                        .collect();
                    let hi: Vec<f32> = freqs.iter().map(|&f| f as f32).collect();
                    let lo: Vec<f32> = freqs
                        .iter()
                        .zip(&hi)
                        .map(|(&f, &h)| (f - f64::from(h)) as f32)
                        .collect();
                    (rec.upload_f32(&hi)?, Some(rec.upload_f32(&lo)?))
                }
            };
            let x = rec.as_dtype(x, DType::F32)?;
            let n = x.numel();
            let params = [
                u(n, "rope")?,
                u(seq, "rope")?,
                u(heads, "rope")?,
                u(dim, "rope")?,
                u(rd, "rope")?,
                u32::from(*interleaved),
                u32::from(positions.is_some()),
                u32::from(per_batch),
                i32::try_from(*offset).map_err(|_| unsupported(format!("rope offset {offset}")))?
                    as u32,
                u32::from(lo.is_some()),
            ];
            let dummy = rec.gpu.dummy.clone();
            rec.via_f32(out, |rec, y| {
                rec.dispatch(
                    Kernel::Rope,
                    &params,
                    &[
                        x.buffer(),
                        positions.as_ref().map_or(&dummy, |p| p.buffer()),
                        hi.buffer(),
                        lo.as_ref().map_or(&dummy, |l| l.buffer()),
                        y.buffer(),
                    ],
                    threads_groups(n),
                )
            })
        }
        Op::Attention {
            has_segments: true, ..
        } => Err(unsupported(
            "attention over packed sequences (segments) is not implemented on this device".into(),
        )),
        Op::Attention {
            has_append: true, ..
        } => Err(unsupported(
            "attention with appended keys (k_append, v_append) is not implemented on this device"
                .into(),
        )),
        Op::Attention {
            causal,
            scale,
            has_key_padding_mask,
            has_segments: false,
            has_append: false,
        } => attention(
            rec,
            [arg(0)?, arg(1)?, arg(2)?],
            optional(*has_key_padding_mask, 3)?,
            *causal,
            *scale,
            out,
        ),
        Op::Embedding => {
            let (w, ids) = (arg(0)?, arg(1)?);
            let ids = match ids.dtype {
                DType::I64 | DType::I32 => ids.clone(),
                _ => rec.as_dtype(ids, DType::I32)?,
            };
            let n = out.numel();
            let params = [
                u(n, "embedding")?,
                out.dtype.size() as u32,
                u(w.shape.get(1).copied().unwrap_or(1), "embedding")?,
                u(w.shape.first().copied().unwrap_or(0), "embedding")?,
                u32::from(ids.dtype == DType::I64),
            ];
            rec.dispatch(
                Kernel::Embedding,
                &params,
                &[w.buffer(), ids.buffer(), out.buffer(), bad_ids],
                threads_groups(words(n, out.dtype)),
            )
        }
        Op::Transpose { perm } => {
            let x = arg(0)?;
            let own = contiguous_strides(&x.shape);
            let st: Vec<i64> = perm.iter().map(|&p| own[p]).collect();
            strided_copy(rec, x, 0, st, out)
        }
        Op::Slice {
            axis, start, step, ..
        } => {
            let x = arg(0)?;
            let len = x.shape[*axis] as isize;
            let begin = slice_begin(len, *start, *step);
            let mut st = contiguous_strides(&x.shape);
            let base = begin as i64 * st[*axis];
            st[*axis] *= *step as i64;
            strided_copy(rec, x, base, st, out)
        }
        Op::Concat { axis } => {
            let mut at = 0usize;
            let shape = out
                .shape
                .iter()
                .map(|&d| u(d, "concat"))
                .collect::<Result<Vec<_>>>()?;
            if shape.len() > MAX_DIMS {
                return Err(unsupported(format!("concat of {} dims", shape.len())));
            }
            for part in args {
                let len = part.shape[*axis];
                let strides: Vec<u32> = contiguous_strides(&part.shape)
                    .iter()
                    .map(|&s| s as u32)
                    .collect();
                let n = out.numel();
                let mut params = vec![
                    u(n, "concat")?,
                    out.dtype.size() as u32,
                    shape.len() as u32,
                    1,
                    *axis as u32,
                    u(at, "concat")?,
                    u(at + len, "concat")?,
                    0,
                ];
                params.extend(padded(&shape, 6));
                params.extend(padded(&strides, 6));
                if part.numel() > 0 {
                    rec.dispatch(
                        Kernel::Copy,
                        &params,
                        &[part.buffer(), out.buffer()],
                        threads_groups(words(n, out.dtype)),
                    )?;
                }
                at += len;
            }
            Ok(())
        }
        Op::Reduce { kind, axis, .. } => reduce(rec, *kind, arg(0)?, *axis, out),
        Op::Where => {
            let (c, a, b) = (arg(0)?, arg(1)?, arg(2)?);
            let c = rec.as_dtype(c, DType::Bool)?;
            select(rec, &c, a, b, out)
        }
        Op::MaskedFill { .. } => {
            let (x, m) = (arg(0)?, arg(1)?);
            let m = rec.as_dtype(m, DType::Bool)?;
            let fill = aux
                .fill
                .as_ref()
                .ok_or_else(|| Error::Internal("masked_fill lost its value".into()))?;
            select(rec, &m, fill, x, out)
        }
        Op::TopK {
            k,
            axis,
            largest,
            output,
        } => topk(rec, arg(0)?, *k, *axis, *largest, *output, out),
        Op::Cast { .. } => rec.cast_into(arg(0)?, out),
    }
}

impl Recorder<'_> {
    /// A small buffer of its own (not pooled: a pooled one may still be read
    /// by work queued earlier in this run, and writes land before the run's work).
    fn upload_f32(&self, values: &[f32]) -> Result<DVal> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(DVal {
            buf: Arc::new(GpuBuf::owned(self.gpu.upload(&bytes)?)),
            dtype: DType::F32,
            shape: vec![values.len()],
        })
    }
}

fn strided_copy(
    rec: &mut Recorder<'_>,
    x: &DVal,
    base: i64,
    strides: Vec<i64>,
    out: &DVal,
) -> Result<()> {
    let (sizes, st) = merged("strided copy", &out.shape, &[strides], MAX_DIMS)?;
    let n = out.numel();
    let mut params = vec![
        u(n, "copy")?,
        out.dtype.size() as u32,
        sizes.len() as u32,
        0,
        u32::MAX,
        0,
        0,
        base as i32 as u32,
    ];
    params.extend(padded(&sizes, 6));
    params.extend(padded(&st[0], 6));
    rec.dispatch(
        Kernel::Copy,
        &params,
        &[x.buffer(), out.buffer()],
        threads_groups(words(n, out.dtype)),
    )
}

fn select(rec: &mut Recorder<'_>, c: &DVal, a: &DVal, b: &DVal, out: &DVal) -> Result<()> {
    let (sizes, st) = merged(
        "where",
        &out.shape,
        &[
            broadcast_strides(&c.shape, &out.shape),
            broadcast_strides(&a.shape, &out.shape),
            broadcast_strides(&b.shape, &out.shape),
        ],
        MAX_DIMS,
    )?;
    let n = out.numel();
    let mut params = vec![u(n, "where")?, out.dtype.size() as u32, sizes.len() as u32];
    params.extend(padded(&sizes, 6));
    for s in &st {
        params.extend(padded(s, 6));
    }
    rec.dispatch(
        Kernel::Select,
        &params,
        &[c.buffer(), a.buffer(), b.buffer(), out.buffer()],
        threads_groups(words(n, out.dtype)),
    )
}

fn norm(
    rec: &mut Recorder<'_>,
    x: &DVal,
    w: Option<&DVal>,
    b: Option<&DVal>,
    eps: f64,
    rms: bool,
    out: &DVal,
) -> Result<()> {
    let n = out.shape.last().copied().unwrap_or(1);
    let rows = out.numel() / n.max(1);
    let x = rec.as_dtype(x, DType::F32)?;
    let w = w.map(|w| rec.as_dtype(w, DType::F32)).transpose()?;
    let b = b.map(|b| rec.as_dtype(b, DType::F32)).transpose()?;
    let params = [
        u(rows, "norm")?,
        u(n, "norm")?,
        (eps as f32).to_bits(),
        u32::from(rms),
        u32::from(w.is_some()),
        u32::from(b.is_some()),
    ];
    let dummy = rec.gpu.dummy.clone();
    rec.via_f32(out, |rec, y| {
        rec.dispatch(
            Kernel::Norm,
            &params,
            &[
                x.buffer(),
                w.as_ref().map_or(&dummy, |w| w.buffer()),
                b.as_ref().map_or(&dummy, |b| b.buffer()),
                y.buffer(),
            ],
            rows,
        )
    })
}

/// A GEMM's geometry: element strides of A (m, k) and B (k, n), and the
/// broadcast batch (shape, A strides, B strides; output batches are M*N apart).
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    a_ms: usize,
    a_ks: usize,
    b_ks: usize,
    b_ns: usize,
    activation: u32,
    batch: (Vec<u32>, Vec<u32>, Vec<u32>),
    /// B's element type: 0 f32, 1 f16, 2 bf16.
    b_dtype: u32,
}

/// The GEMM's code of a B dtype it reads natively.
fn gemm_dtype(d: DType) -> u32 {
    match d {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    }
}

impl Recorder<'_> {
    /// A GEMM's B operand: f32, f16 and bf16 as they are (16-bit weights stay
    /// 16-bit on the device), anything else converted to f32.
    fn gemm_operand(&mut self, b: &DVal) -> Result<DVal> {
        match b.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Ok(b.clone()),
            _ => self.as_dtype(b, DType::F32),
        }
    }
}

impl Gemm {
    fn run(
        &self,
        rec: &mut Recorder<'_>,
        a: &DVal,
        b: &DVal,
        bias: Option<&DVal>,
        residual: Option<&DVal>,
        y: &DVal,
    ) -> Result<()> {
        let batches: usize = self.batch.0.iter().map(|&d| d as usize).product();
        let mut params = vec![
            u(self.m, "gemm")?,
            u(self.n, "gemm")?,
            u(self.k, "gemm")?,
            u(self.a_ms, "gemm")?,
            u(self.a_ks, "gemm")?,
            u(self.b_ks, "gemm")?,
            u(self.b_ns, "gemm")?,
            self.activation,
            u32::from(bias.is_some()),
            u32::from(residual.is_some()),
            self.batch.0.len() as u32,
        ];
        params.extend(padded(&self.batch.0, 4));
        params.extend(padded(&self.batch.1, 4));
        params.extend(padded(&self.batch.2, 4));
        params.push(self.b_dtype);
        let dummy = rec.gpu.dummy.clone();
        let groups = (
            u(self.n.div_ceil(64), "gemm")?,
            u(self.m.div_ceil(64), "gemm")?,
            u(batches, "gemm batches")?,
        );
        if groups.1 > 65_535 || groups.2 > 65_535 {
            return Err(unsupported(format!(
                "a GEMM of {} rows in {batches} batches (at most 65535 tiles per axis)",
                self.m
            )));
        }
        rec.dispatch_3d(
            Kernel::Gemm,
            &params,
            &[
                a.buffer(),
                b.buffer(),
                bias.map_or(&dummy, |b| b.buffer()),
                residual.map_or(&dummy, |r| r.buffer()),
                y.buffer(),
            ],
            groups,
        )
    }
}

fn matmul(rec: &mut Recorder<'_>, a: &DVal, b: &DVal, out: &DVal) -> Result<()> {
    let a = rec.as_dtype(a, DType::F32)?;
    let b = rec.gemm_operand(b)?;
    // numpy: a 1-D a is a row, a 1-D b a column.
    let a_shape = if a.shape.len() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b_shape = if b.shape.len() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]);
    let n = b_shape[b_shape.len() - 1];
    let (a_batch, b_batch) = (&a_shape[..a_shape.len() - 2], &b_shape[..b_shape.len() - 2]);
    let nd = a_batch.len().max(b_batch.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; nd - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ab, bb) = (pad(a_batch), pad(b_batch));
    let batch_shape: Vec<usize> = ab.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
    let mat_strides = |padded_batch: &[usize], mat: usize| -> Vec<i64> {
        let mut st = vec![0i64; nd];
        let mut acc = mat as i64;
        for d in (0..nd).rev() {
            st[d] = if padded_batch[d] == 1 { 0 } else { acc };
            acc *= padded_batch[d] as i64;
        }
        st
    };
    let (sizes, st) = merged(
        "matmul",
        &batch_shape,
        &[mat_strides(&ab, m * k), mat_strides(&bb, k * n)],
        4,
    )?;
    let gemm = Gemm {
        m,
        n,
        k,
        a_ms: k,
        a_ks: 1,
        b_ks: n,
        b_ns: 1,
        activation: 0,
        batch: (sizes, st[0].clone(), st[1].clone()),
        b_dtype: gemm_dtype(b.dtype),
    };
    rec.via_f32(out, |rec, y| gemm.run(rec, &a, &b, None, None, y))
}

fn attention(
    rec: &mut Recorder<'_>,
    [q, k, v]: [&DVal; 3],
    mask: Option<&DVal>,
    causal: bool,
    scale: Option<f32>,
    out: &DVal,
) -> Result<()> {
    const OP: &str = "attention";
    let (&[batch, seq_q, heads_q, dim], &[_, seq_k, heads_kv, _], &[.., dim_v]) =
        (q.shape.as_slice(), k.shape.as_slice(), v.shape.as_slice())
    else {
        return Err(Error::shape(OP, "q, k, v must be 4-D"));
    };
    if dim_v > 256 || dim > 256 {
        return Err(unsupported(format!(
            "attention with head_dim {dim}/{dim_v} (the fused kernel keeps at most 256 per row)"
        )));
    }
    if heads_kv == 0 || heads_q % heads_kv != 0 {
        return Err(Error::shape(
            OP,
            format!("heads_q ({heads_q}) must be a multiple of heads_kv ({heads_kv})"),
        ));
    }
    let scale = scale.unwrap_or(if dim == 0 {
        1.0
    } else {
        1.0 / (dim as f32).sqrt()
    });
    let q = rec.as_dtype(q, DType::F32)?;
    let k = rec.as_dtype(k, DType::F32)?;
    let v = rec.as_dtype(v, DType::F32)?;
    let mask = mask.map(|m| rec.as_dtype(m, DType::Bool)).transpose()?;
    let params = [
        u(batch, OP)?,
        u(seq_q, OP)?,
        u(seq_k, OP)?,
        u(heads_q, OP)?,
        u(heads_kv, OP)?,
        u(dim, OP)?,
        u(dim_v, OP)?,
        scale.to_bits(),
        u32::from(causal),
        u32::from(mask.is_some()),
    ];
    let rows = batch * seq_q * heads_q;
    let dummy = rec.gpu.dummy.clone();
    rec.via_f32(out, |rec, y| {
        rec.dispatch(
            Kernel::Attention,
            &params,
            &[
                q.buffer(),
                k.buffer(),
                v.buffer(),
                mask.as_ref().map_or(&dummy, |m| m.buffer()),
                y.buffer(),
            ],
            rows,
        )
    })
}

fn reduce(
    rec: &mut Recorder<'_>,
    kind: Reduce,
    x: &DVal,
    axis: Option<isize>,
    out: &DVal,
) -> Result<()> {
    let name = kind.name();
    let (outer, n, inner) = match axis {
        None => (1, x.numel(), 1),
        Some(a) => around(&x.shape, normalize_axis(name, a, x.shape.len())?),
    };
    if n == 0 && !matches!(kind, Reduce::Sum | Reduce::Mean) {
        return Err(Error::shape(
            name,
            format!("cannot take {name} over an empty axis (no identity)"),
        ));
    }
    let code = match kind {
        Reduce::Sum => 0,
        Reduce::Mean => 1,
        Reduce::Max => 2,
        Reduce::Min => 3,
        Reduce::ArgMax => 4,
    };
    let x = rec.as_dtype(x, DType::F32)?;
    let params = [u(outer, name)?, u(n, name)?, u(inner, name)?, code];
    let run = |rec: &mut Recorder<'_>, y: &DVal| {
        rec.dispatch(
            Kernel::Reduce,
            &params,
            &[x.buffer(), y.buffer()],
            outer * inner,
        )
    };
    if kind == Reduce::ArgMax {
        run(rec, out)
    } else {
        rec.via_f32(out, run)
    }
}

fn topk(
    rec: &mut Recorder<'_>,
    x: &DVal,
    k: usize,
    axis: usize,
    largest: bool,
    output: TopKOutput,
    out: &DVal,
) -> Result<()> {
    let (outer, n, inner) = around(&x.shape, axis);
    if k > n {
        return Err(Error::shape(
            "topk",
            format!("k={k} is larger than the size {n} of axis {axis}"),
        ));
    }
    let mut shape = x.shape.clone();
    shape[axis] = k;
    let xf = rec.as_dtype(x, DType::F32)?;
    // The requested output is written in place when its dtype allows, the other goes to scratch.
    let values = match output {
        TopKOutput::Values if out.dtype == DType::F32 => out.clone(),
        _ => rec.value(DType::F32, &shape)?,
    };
    let indices = match output {
        TopKOutput::Indices => out.clone(),
        TopKOutput::Values => rec.value(DType::I64, &shape)?,
    };
    let params = [
        u(outer, "topk")?,
        u(n, "topk")?,
        u(inner, "topk")?,
        u(k, "topk")?,
        u32::from(largest),
    ];
    rec.dispatch(
        Kernel::TopK,
        &params,
        &[xf.buffer(), values.buffer(), indices.buffer()],
        threads_groups(outer * inner),
    )?;
    if output == TopKOutput::Values && out.dtype != DType::F32 {
        rec.cast_into(&values, out)?;
    }
    Ok(())
}
