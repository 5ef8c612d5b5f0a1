//! One graph node on the GPU: each arm maps an op onto the kernels of
//! kernels.cu (or cuBLAS, in gemm.rs) with the node's attributes, writing the
//! node's output where the executor placed it.
//!
//! Ops the kernels compute in f32 (norms, softmax, rope, attention, unary and
//! binary math on f16/bf16) take other float inputs through a cast to f32 and
//! give their result back in the node's dtype, as the CPU's eager ops do.

use std::sync::Arc;

use rtserve_core::graph::{Node, Op, TopKOutput};
use rtserve_core::kernels::generic::elementwise::{Binary, Unary};
use rtserve_core::ops::reduce::Reduce;
use rtserve_core::shape::{around, normalize_axis};
use rtserve_core::{DType, Error, Result, Tensor};

use crate::gpu::{grid_for, Gpu, GpuBuffer};
use crate::kernels::{dtype_code, Arg, Strided, MAX_DIMS};

/// A value on the device: contiguous, row-major, at `address`. `owner` keeps
/// memory alive that is not in the run's arena (inputs, weights, scratch).
#[derive(Clone)]
pub struct DVal {
    pub address: u64,
    pub dtype: DType,
    pub shape: Vec<usize>,
    #[allow(dead_code, reason = "held to keep `address` valid, never read")]
    pub owner: Option<Arc<GpuBuffer>>,
}

impl DVal {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// Fresh device memory for a value of `dtype` and `shape`.
pub fn temp(gpu: &Gpu, dtype: DType, shape: &[usize]) -> Result<DVal> {
    let bytes = shape.iter().product::<usize>() * dtype.size();
    let buf = gpu.alloc(bytes)?;
    Ok(DVal {
        address: buf.address,
        dtype,
        shape: shape.to_vec(),
        owner: Some(Arc::new(buf)),
    })
}

const BLOCK: u32 = 256;

/// Threads per block for a per-row kernel over rows of `n` elements: a multiple of 32.
fn row_block(n: usize) -> u32 {
    (n.div_ceil(32) * 32).clamp(32, 256) as u32
}

fn unsupported(detail: String) -> Error {
    Error::Unsupported(format!("cuda device: {detail}"))
}

/// Element conversion `src` -> `dst` (same shape), cast.rs's semantics.
pub fn cast_into(gpu: &Gpu, src: &DVal, dst: &DVal) -> Result<()> {
    let n = src.numel();
    if n == 0 {
        return Ok(());
    }
    if src.dtype == dst.dtype {
        return copy_bytes(gpu, src.address, dst.address, src.bytes());
    }
    gpu.launch(
        "cast_any",
        grid_for(n, BLOCK),
        BLOCK,
        0,
        &[
            Arg::Ptr(src.address),
            Arg::I32(dtype_code(src.dtype)),
            Arg::Ptr(dst.address),
            Arg::I32(dtype_code(dst.dtype)),
            Arg::I64(n as i64),
        ],
    )
}

/// `x` as `dtype`: itself when it already is, else a converted copy.
pub fn as_dtype(gpu: &Gpu, x: &DVal, dtype: DType) -> Result<DVal> {
    if x.dtype == dtype {
        return Ok(x.clone());
    }
    let t = temp(gpu, dtype, &x.shape)?;
    cast_into(gpu, x, &t)?;
    Ok(t)
}

/// Runs `f` on an f32 destination: `out` itself, or a scratch buffer then cast into `out`.
fn via_f32(gpu: &Gpu, out: &DVal, f: impl FnOnce(&DVal) -> Result<()>) -> Result<()> {
    if out.dtype == DType::F32 {
        return f(out);
    }
    let t = temp(gpu, DType::F32, &out.shape)?;
    f(&t)?;
    cast_into(gpu, &t, out)
}

pub fn copy_bytes(gpu: &Gpu, src: u64, dst: u64, bytes: usize) -> Result<()> {
    if bytes == 0 || src == dst {
        return Ok(());
    }
    gpu.launch(
        "copy_rows",
        grid_for(bytes, BLOCK),
        BLOCK,
        0,
        &[
            Arg::Ptr(src),
            Arg::Ptr(dst),
            Arg::I64(1),
            Arg::I64(bytes as i64),
            Arg::I64(0),
            Arg::I64(0),
        ],
    )
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

/// The `Strided` argument for output `shape` and operand strides, with size-1
/// dims dropped and mergeable neighbours merged (fewer dims, cheaper indexing).
fn strided(op: &str, shape: &[usize], operands: &[Vec<i64>]) -> Result<Strided> {
    let mut dims: Vec<(usize, Vec<i64>)> = Vec::new();
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let st: Vec<i64> = operands.iter().map(|o| o[d]).collect();
        if let Some((n, prev)) = dims.last_mut() {
            let mergeable = prev
                .iter()
                .zip(&st)
                .all(|(&p, &s)| p == s * shape[d] as i64);
            if mergeable {
                *n *= shape[d];
                *prev = st;
                continue;
            }
        }
        dims.push((shape[d], st));
    }
    if dims.len() > MAX_DIMS {
        return Err(unsupported(format!(
            "{op} over {} non-mergeable dims (at most {MAX_DIMS}): shape {shape:?}",
            dims.len()
        )));
    }
    let mut s = Strided {
        ndim: dims.len() as i32,
        ..Strided::default()
    };
    for (d, (n, st)) in dims.iter().enumerate() {
        s.shape[d] = *n as i64;
        for (k, &v) in st.iter().enumerate() {
            s.stride[k][d] = v;
        }
    }
    Ok(s)
}

fn unary_code(op: Unary) -> i32 {
    match op {
        Unary::Exp => 0,
        Unary::Log => 1,
        Unary::Tanh => 2,
        Unary::Erf => 3,
        Unary::Gelu => 4,
        Unary::GeluTanh => 5,
        Unary::Silu => 6,
        Unary::Relu => 7,
        Unary::Sigmoid => 8,
        Unary::Sqrt => 9,
        Unary::Rsqrt => 10,
        Unary::Neg => 11,
        Unary::Abs => 12,
    }
}

fn binary_code(op: Binary) -> i32 {
    match op {
        Binary::Add => 0,
        Binary::Sub => 1,
        Binary::Mul => 2,
        Binary::Div => 3,
        Binary::Max => 4,
        Binary::Min => 5,
        Binary::Pow => 6,
    }
}

/// The kernel suffix of a dtype the elementwise kernels take natively.
fn native_suffix(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "i64",
        DType::I32 => "i32",
        DType::I16 => "i16",
        DType::I8 => "i8",
        DType::U8 => "u8",
        _ => return None,
    })
}

/// Whether the CUDA device runs `op` on inputs of `dtype`: the CPU's coverage.
pub fn supports(op: &Op, dtype: DType) -> bool {
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
        | Op::Reduce { .. }
        | Op::Cast { .. } => true,
        Op::Binary(b) => dtype.is_float() || (b.takes_integers() && dtype != DType::Bool),
        Op::Unary(u) => dtype.is_float() || (u.takes_integers() && dtype != DType::Bool),
        Op::TopK { .. } => dtype != DType::Bool,
        // Activations are f32 (the weight may be f32, bf16 or f16), like the CPU's GEMM.
        Op::MatMul | Op::Linear { .. } => dtype == DType::F32,
        _ => dtype.is_float(),
    }
}

/// Per-node data the executable keeps across runs.
#[derive(Default)]
pub struct NodeAux {
    /// Rope without an inv_freq input: theta^(-2i/rotary_dim), f64, on the device.
    pub inv_freq: Option<Arc<GpuBuffer>>,
}

/// Writes node `node`'s output into `out` (allocated, `node.out` resolved).
/// `bad_ids` is the run's out-of-range flag for embedding ids.
pub fn execute(
    gpu: &Gpu,
    node: &Node,
    args: &[&DVal],
    out: &DVal,
    aux: &NodeAux,
    bad_ids: u64,
) -> Result<()> {
    let arg = |i: usize| {
        args.get(i)
            .copied()
            .ok_or_else(|| Error::Internal(format!("{} lacks its input {i}", node.op.name())))
    };
    let optional = |present: bool, i: usize| present.then(|| arg(i)).transpose();
    if out.numel() == 0 && !matches!(node.op, Op::Reduce { .. }) {
        return Ok(());
    }
    match &node.op {
        Op::Input { .. } | Op::Constant(_) | Op::Reshape { .. } => Err(Error::Internal(format!(
            "{} is not executed by a kernel",
            node.op.name()
        ))),
        Op::MatMul => crate::gemm::matmul(gpu, arg(0)?, arg(1)?, out),
        Op::Linear {
            activation,
            has_bias,
            has_residual,
            ..
        } => crate::gemm::linear(
            gpu,
            arg(0)?,
            arg(1)?,
            optional(*has_bias, 2)?,
            *activation,
            optional(*has_residual, 2 + usize::from(*has_bias))?,
            out,
        ),
        Op::Binary(op) => binary(gpu, *op, arg(0)?, arg(1)?, out),
        Op::Unary(op) => unary(gpu, *op, arg(0)?, out),
        Op::Softmax { axis, log } => softmax(gpu, arg(0)?, *axis, *log, out),
        Op::LayerNorm {
            eps,
            has_weight,
            has_bias,
        } => {
            let (x, n) = (arg(0)?, out.shape.last().copied().unwrap_or(1));
            let x = as_dtype(gpu, x, DType::F32)?;
            let w = optional(*has_weight, 1)?
                .map(|w| as_dtype(gpu, w, DType::F32))
                .transpose()?;
            let b = optional(*has_bias, 1 + usize::from(*has_weight))?
                .map(|b| as_dtype(gpu, b, DType::F32))
                .transpose()?;
            via_f32(gpu, out, |y| {
                let rows = y.numel() / n.max(1);
                gpu.launch(
                    "layer_norm_f32",
                    grid_for(rows, 1),
                    row_block(n),
                    0,
                    &[
                        Arg::Ptr(x.address),
                        Arg::Ptr(w.as_ref().map_or(0, |w| w.address)),
                        Arg::Ptr(b.as_ref().map_or(0, |b| b.address)),
                        Arg::Ptr(y.address),
                        Arg::I64(rows as i64),
                        Arg::I64(n as i64),
                        Arg::F32(*eps as f32),
                    ],
                )
            })
        }
        Op::RmsNorm { eps, has_weight } => {
            let (x, n) = (arg(0)?, out.shape.last().copied().unwrap_or(1));
            let x = as_dtype(gpu, x, DType::F32)?;
            let w = optional(*has_weight, 1)?
                .map(|w| as_dtype(gpu, w, DType::F32))
                .transpose()?;
            via_f32(gpu, out, |y| {
                let rows = y.numel() / n.max(1);
                gpu.launch(
                    "rms_norm_f32",
                    grid_for(rows, 1),
                    row_block(n),
                    0,
                    &[
                        Arg::Ptr(x.address),
                        Arg::Ptr(w.as_ref().map_or(0, |w| w.address)),
                        Arg::Ptr(y.address),
                        Arg::I64(rows as i64),
                        Arg::I64(n as i64),
                        Arg::F32(*eps as f32),
                    ],
                )
            })
        }
        Op::Rope {
            interleaved,
            offset,
            rotary_dim,
            has_positions,
            has_inv_freq,
            ..
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
                .map(|p| as_dtype(gpu, p, DType::I64))
                .transpose()?;
            let per_batch = positions.as_ref().is_some_and(|p| p.shape.len() == 2);
            let inv_freq = match optional(*has_inv_freq, 1 + usize::from(*has_positions))? {
                Some(f) => as_dtype(gpu, f, DType::F64)?.address,
                None => aux
                    .inv_freq
                    .as_ref()
                    .map(|b| b.address)
                    .ok_or_else(|| Error::Internal("rope lost its inv_freq".into()))?,
            };
            let x = as_dtype(gpu, x, DType::F32)?;
            via_f32(gpu, out, |y| {
                let n = y.numel();
                gpu.launch(
                    "rope_f32",
                    grid_for(n, BLOCK),
                    BLOCK,
                    0,
                    &[
                        Arg::Ptr(x.address),
                        Arg::Ptr(y.address),
                        Arg::Ptr(positions.as_ref().map_or(0, |p| p.address)),
                        Arg::I32(per_batch.into()),
                        Arg::I64(*offset),
                        Arg::Ptr(inv_freq),
                        Arg::I64(seq as i64),
                        Arg::I64(heads as i64),
                        Arg::I64(dim as i64),
                        Arg::I64(rd as i64),
                        Arg::I32((*interleaved).into()),
                        Arg::I64(n as i64),
                    ],
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
            gpu,
            arg(0)?,
            arg(1)?,
            arg(2)?,
            optional(*has_key_padding_mask, 3)?,
            *causal,
            *scale,
            out,
        ),
        Op::Embedding => {
            let (w, ids) = (arg(0)?, arg(1)?);
            let vocab = w.shape.first().copied().unwrap_or(0);
            let row_bytes = w.shape.get(1).copied().unwrap_or(1) * w.dtype.size();
            let n_ids = ids.numel();
            gpu.launch(
                "embedding_rows",
                grid_for(n_ids, 1),
                128,
                0,
                &[
                    Arg::Ptr(w.address),
                    Arg::Ptr(ids.address),
                    Arg::I32(dtype_code(ids.dtype)),
                    Arg::Ptr(out.address),
                    Arg::I64(n_ids as i64),
                    Arg::I64(row_bytes as i64),
                    Arg::I64(vocab as i64),
                    Arg::Ptr(bad_ids),
                ],
            )
        }
        Op::Transpose { perm } => {
            let x = arg(0)?;
            let own = contiguous_strides(&x.shape);
            let st: Vec<i64> = perm.iter().map(|&p| own[p]).collect();
            strided_copy(gpu, x, 0, &[st], out)
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
            strided_copy(gpu, x, base, &[st], out)
        }
        Op::Concat { axis } => {
            let esize = out.dtype.size();
            let (outer, total, inner) = around(&out.shape, *axis);
            let dst_pitch = total * inner * esize;
            let mut at = 0usize;
            for part in args {
                let row_bytes = part.shape[*axis] * inner * esize;
                if row_bytes > 0 && outer > 0 {
                    gpu.launch(
                        "copy_rows",
                        grid_for(outer * row_bytes, BLOCK),
                        BLOCK,
                        0,
                        &[
                            Arg::Ptr(part.address),
                            Arg::Ptr(out.address + at as u64),
                            Arg::I64(outer as i64),
                            Arg::I64(row_bytes as i64),
                            Arg::I64(row_bytes as i64),
                            Arg::I64(dst_pitch as i64),
                        ],
                    )?;
                }
                at += row_bytes;
            }
            Ok(())
        }
        Op::Reduce {
            kind,
            axis,
            keepdims: _,
        } => reduce(gpu, *kind, arg(0)?, *axis, out),
        Op::Where => {
            let (c, a, b) = (arg(0)?, arg(1)?, arg(2)?);
            let s = strided(
                "where",
                &out.shape,
                &[
                    broadcast_strides(&c.shape, &out.shape),
                    broadcast_strides(&a.shape, &out.shape),
                    broadcast_strides(&b.shape, &out.shape),
                ],
            )?;
            let n = out.numel();
            gpu.launch(
                "where_any",
                grid_for(n, BLOCK),
                BLOCK,
                0,
                &[
                    Arg::Ptr(c.address),
                    Arg::I32(dtype_code(c.dtype)),
                    Arg::Ptr(a.address),
                    Arg::Ptr(b.address),
                    Arg::Ptr(out.address),
                    Arg::I32(out.dtype.size() as i32),
                    Arg::Strided(s),
                    Arg::I64(n as i64),
                ],
            )
        }
        Op::MaskedFill { value } => {
            let (x, m) = (arg(0)?, arg(1)?);
            let s = strided(
                "masked_fill",
                &out.shape,
                &[
                    broadcast_strides(&x.shape, &out.shape),
                    broadcast_strides(&m.shape, &out.shape),
                ],
            )?;
            let fill = Tensor::from_slice(&[*value], &[1])?
                .cast(out.dtype)?
                .to_bytes()?;
            let mut bits = [0u8; 8];
            bits[..fill.len()].copy_from_slice(&fill);
            let n = out.numel();
            gpu.launch(
                "masked_fill_any",
                grid_for(n, BLOCK),
                BLOCK,
                0,
                &[
                    Arg::Ptr(x.address),
                    Arg::Ptr(m.address),
                    Arg::I32(dtype_code(m.dtype)),
                    Arg::Ptr(out.address),
                    Arg::I32(out.dtype.size() as i32),
                    Arg::U64(u64::from_le_bytes(bits)),
                    Arg::Strided(s),
                    Arg::I64(n as i64),
                ],
            )
        }
        Op::TopK {
            k,
            axis,
            largest,
            output,
        } => topk(gpu, arg(0)?, *k, *axis, *largest, *output, out),
        Op::Cast { .. } => cast_into(gpu, arg(0)?, out),
    }
}

/// numpy's first index of `x[start::step]` along an axis of length `len`.
fn slice_begin(len: isize, start: Option<isize>, step: isize) -> isize {
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

fn strided_copy(gpu: &Gpu, x: &DVal, base: i64, strides: &[Vec<i64>], out: &DVal) -> Result<()> {
    let s = strided("strided copy", &out.shape, strides)?;
    let n = out.numel();
    gpu.launch(
        "strided_copy",
        grid_for(n, BLOCK),
        BLOCK,
        0,
        &[
            Arg::Ptr(x.address),
            Arg::Ptr(out.address),
            Arg::I32(x.dtype.size() as i32),
            Arg::Strided(s),
            Arg::I64(base),
            Arg::I64(n as i64),
        ],
    )
}

fn unary(gpu: &Gpu, op: Unary, x: &DVal, out: &DVal) -> Result<()> {
    let run = |x: &DVal, y: &DVal, suffix: &str| {
        let n = y.numel();
        gpu.launch(
            &format!("unary_{suffix}"),
            grid_for(n, BLOCK),
            BLOCK,
            0,
            &[
                Arg::I32(unary_code(op)),
                Arg::Ptr(x.address),
                Arg::Ptr(y.address),
                Arg::I64(n as i64),
            ],
        )
    };
    if !supports(&Op::Unary(op), x.dtype) {
        return Err(unsupported(format!("{} on {}", op.name(), x.dtype)));
    }
    match native_suffix(x.dtype) {
        Some(suffix) => run(x, out, suffix),
        None => {
            let xf = as_dtype(gpu, x, DType::F32)?;
            via_f32(gpu, out, |y| run(&xf, y, "f32"))
        }
    }
}

fn binary(gpu: &Gpu, op: Binary, a: &DVal, b: &DVal, out: &DVal) -> Result<()> {
    if !supports(&Op::Binary(op), a.dtype) || a.dtype != b.dtype {
        return Err(unsupported(format!(
            "{} on {} and {}",
            op.name(),
            a.dtype,
            b.dtype
        )));
    }
    let contiguous = a.shape == out.shape && b.shape == out.shape;
    let s = strided(
        op.name(),
        &out.shape,
        &[
            broadcast_strides(&a.shape, &out.shape),
            broadcast_strides(&b.shape, &out.shape),
        ],
    )?;
    let run = |a: &DVal, b: &DVal, y: &DVal, suffix: &str| {
        let n = y.numel();
        gpu.launch(
            &format!("binary_{suffix}"),
            grid_for(n, BLOCK),
            BLOCK,
            0,
            &[
                Arg::I32(binary_code(op)),
                Arg::Ptr(a.address),
                Arg::Ptr(b.address),
                Arg::Ptr(y.address),
                Arg::Strided(s),
                Arg::I32(contiguous.into()),
                Arg::I64(n as i64),
            ],
        )
    };
    match native_suffix(a.dtype) {
        Some(suffix) => run(a, b, out, suffix),
        None => {
            let (af, bf) = (as_dtype(gpu, a, DType::F32)?, as_dtype(gpu, b, DType::F32)?);
            via_f32(gpu, out, |y| run(&af, &bf, y, "f32"))
        }
    }
}

fn softmax(gpu: &Gpu, x: &DVal, axis: isize, log: bool, out: &DVal) -> Result<()> {
    let axis = normalize_axis("softmax", axis, x.shape.len())?;
    let (outer, n, inner) = around(&x.shape, axis);
    let x = as_dtype(gpu, x, DType::F32)?;
    via_f32(gpu, out, |y| {
        gpu.launch(
            "softmax_f32",
            grid_for(outer * inner, 1),
            row_block(n),
            0,
            &[
                Arg::Ptr(x.address),
                Arg::Ptr(y.address),
                Arg::I64(outer as i64),
                Arg::I64(n as i64),
                Arg::I64(inner as i64),
                Arg::I32(log.into()),
            ],
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn attention(
    gpu: &Gpu,
    q: &DVal,
    k: &DVal,
    v: &DVal,
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
    if dim_v > 256 {
        return Err(unsupported(format!(
            "attention with head_dim_v {dim_v} (the fused kernel keeps at most 256 per row)"
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
    let (q, k, v) = (
        as_dtype(gpu, q, DType::F32)?,
        as_dtype(gpu, k, DType::F32)?,
        as_dtype(gpu, v, DType::F32)?,
    );
    let mask = mask.map(|m| as_dtype(gpu, m, DType::Bool)).transpose()?;
    const WARPS: usize = 4;
    let rows = batch * seq_q * heads_q;
    via_f32(gpu, out, |y| {
        gpu.launch(
            "attention_f32",
            grid_for(rows, WARPS as u32),
            32 * WARPS as u32,
            (WARPS * dim.max(1) * 4) as u32,
            &[
                Arg::Ptr(q.address),
                Arg::Ptr(k.address),
                Arg::Ptr(v.address),
                Arg::Ptr(mask.as_ref().map_or(0, |m| m.address)),
                Arg::Ptr(y.address),
                Arg::I64(batch as i64),
                Arg::I64(seq_q as i64),
                Arg::I64(seq_k as i64),
                Arg::I64(heads_q as i64),
                Arg::I64(heads_kv as i64),
                Arg::I64(dim as i64),
                Arg::I64(dim_v as i64),
                Arg::F32(scale),
                Arg::I32(causal.into()),
            ],
        )
    })
}

fn reduce(gpu: &Gpu, kind: Reduce, x: &DVal, axis: Option<isize>, out: &DVal) -> Result<()> {
    let name = kind.name();
    let (outer, n, inner) = match axis {
        None => (1, x.numel(), 1),
        Some(a) => around(&x.shape, normalize_axis(name, a, x.shape.len())?),
    };
    let rows = outer * inner;
    if rows == 0 {
        return Ok(());
    }
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
    let floats = x.dtype.is_float();
    let wide = as_dtype(gpu, x, if floats { DType::F64 } else { DType::I64 })?;
    // The kernel's own result dtype: argmax i64; floats f64; integer mean f64, else i64.
    let result = match kind {
        Reduce::ArgMax => DType::I64,
        _ if floats => DType::F64,
        Reduce::Mean => DType::F64,
        _ => DType::I64,
    };
    let dst = if out.dtype == result {
        out.clone()
    } else {
        temp(gpu, result, &out.shape)?
    };
    let (f64_out, i64_out) = match result {
        DType::F64 => (dst.address, 0),
        _ => (0, dst.address),
    };
    let args = if floats {
        vec![Arg::Ptr(wide.address), Arg::Ptr(f64_out), Arg::Ptr(i64_out)]
    } else {
        vec![Arg::Ptr(wide.address), Arg::Ptr(i64_out), Arg::Ptr(f64_out)]
    };
    let mut args = args;
    args.extend([
        Arg::I64(outer as i64),
        Arg::I64(n as i64),
        Arg::I64(inner as i64),
        Arg::I32(code),
    ]);
    gpu.launch(
        if floats { "reduce_f64" } else { "reduce_i64" },
        grid_for(rows, 1),
        BLOCK,
        0,
        &args,
    )?;
    if dst.address != out.address {
        cast_into(gpu, &dst, out)?;
    }
    Ok(())
}

fn topk(
    gpu: &Gpu,
    x: &DVal,
    k: usize,
    axis: usize,
    largest: bool,
    output: TopKOutput,
    out: &DVal,
) -> Result<()> {
    if x.dtype == DType::Bool {
        return Err(Error::dtype("topk", "topk is not defined for bool tensors"));
    }
    let (outer, n, inner) = around(&x.shape, axis);
    if k > n {
        return Err(Error::shape(
            "topk",
            format!("k={k} is larger than the size {n} of axis {axis}"),
        ));
    }
    let floats = x.dtype.is_float();
    let keys = as_dtype(gpu, x, if floats { DType::F64 } else { DType::I64 })?;
    let mut out_shape = x.shape.clone();
    out_shape[axis] = k;
    let (vals, idx) = match output {
        TopKOutput::Values => (out.clone(), temp(gpu, DType::I64, &out_shape)?),
        TopKOutput::Indices => (temp(gpu, x.dtype, &out_shape)?, out.clone()),
    };
    gpu.launch(
        "topk_rows",
        grid_for(outer * inner, 1),
        BLOCK,
        0,
        &[
            Arg::Ptr(if floats { keys.address } else { 0 }),
            Arg::Ptr(if floats { 0 } else { keys.address }),
            Arg::Ptr(x.address),
            Arg::I32(x.dtype.size() as i32),
            Arg::I64(outer as i64),
            Arg::I64(n as i64),
            Arg::I64(inner as i64),
            Arg::I64(k as i64),
            Arg::I32(largest.into()),
            Arg::Ptr(vals.address),
            Arg::Ptr(idx.address),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_slice_starts() {
        assert_eq!(slice_begin(33, Some(3), 4), 3);
        assert_eq!(slice_begin(9, None, -2), 8);
        assert_eq!(slice_begin(33, Some(-7), 1), 26);
        assert_eq!(slice_begin(33, Some(40), -5), 32);
        assert_eq!(slice_begin(5, Some(-9), 1), 0);
    }

    #[test]
    fn broadcast_dims_merge() {
        let out = [7usize, 33];
        let s = strided(
            "add",
            &out,
            &[
                broadcast_strides(&[7, 33], &out),
                broadcast_strides(&[33], &out),
            ],
        )
        .unwrap();
        assert_eq!(s.ndim, 2);
        assert_eq!(&s.stride[1][..2], &[0, 1]);
        let s = strided(
            "add",
            &[2, 3, 4],
            &[
                broadcast_strides(&[2, 3, 4], &[2, 3, 4]),
                broadcast_strides(&[2, 3, 4], &[2, 3, 4]),
            ],
        )
        .unwrap();
        assert_eq!((s.ndim, s.shape[0]), (1, 24));
    }
}
