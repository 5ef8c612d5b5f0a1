//! Building a graph node by node. Each method checks its operands' dtypes and
//! (symbolic) shapes and infers the output type, so mistakes surface here,
//! naming the op and the shapes, and never in the middle of a run.
//!
//! Symbolic dims follow one rule: two dims match when they are equal (the
//! same number or the same symbol). Broadcasting also lets a known 1 stretch
//! to anything; two different symbols never broadcast, since nothing says
//! they are equal at run time.

use std::collections::HashMap;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::epilogue::Activation;
use crate::kernels::generic::elementwise::{Binary, Unary};
use crate::layout::slice_indices;
use crate::ops::reduce::Reduce;
use crate::shape::normalize_axis;
use crate::tensor::Tensor;

use super::dim::{format_dims, Dim};
use super::node::{Node, TensorType, ValueId};
use super::op::{Op, TopKOutput};

/// What [`Graph::attention_with`] computes besides q, k, v: the flags and optional inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionSpec {
    pub causal: bool,
    /// Multiplies q·k; default 1/sqrt(head_dim).
    pub scale: Option<f32>,
    pub key_padding_mask: Option<ValueId>,
    pub segments: Option<ValueId>,
    /// (k_append, v_append): keys and values after k and v along seq.
    pub append: Option<(ValueId, ValueId)>,
}

/// A graph under construction: nodes in the order they were added (which is
/// a valid execution order, since a node only reads earlier values).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    inputs: Vec<(String, ValueId)>,
    outputs: Vec<(String, ValueId)>,
}

/// What [`Graph::rope`] takes besides x: the eager op's `RopeOptions` with
/// graph values in place of tensors. `Default` is Llama's (theta 10000, half
/// rotation, positions 0..seq, full head_dim).
#[derive(Clone, Debug)]
pub struct RopeArgs {
    /// Integer positions [batch, seq] or [seq] (shared by the batch).
    pub positions: Option<ValueId>,
    /// Position of token 0 when `positions` is None.
    pub offset: i64,
    pub theta: f64,
    pub interleaved: bool,
    /// Float inverse frequencies [rotary_dim / 2] (e.g. Llama 3 scaling); None: from theta.
    pub inv_freq: Option<ValueId>,
    /// How many leading dims of each head rotate (even); None: all of head_dim.
    pub rotary_dim: Option<usize>,
}

impl Default for RopeArgs {
    fn default() -> Self {
        RopeArgs {
            positions: None,
            offset: 0,
            theta: 10_000.0,
            interleaved: false,
            inv_freq: None,
            rotary_dim: None,
        }
    }
}

fn dims_of(t: &Tensor) -> Vec<Dim> {
    t.shape().iter().map(|&d| Dim::Known(d)).collect()
}

fn is_gemm_weight(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

fn is_integer(dtype: DType) -> bool {
    !dtype.is_float() && dtype != DType::Bool
}

fn need_float(op: &str, what: &str, ty: &TensorType) -> Result<()> {
    if ty.dtype.is_float() {
        Ok(())
    } else {
        Err(Error::dtype(
            op,
            format!("{what} must be a float tensor, got {ty}"),
        ))
    }
}

/// The numpy broadcast of two symbolic shapes.
pub fn broadcast_dims(op: &str, a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let n = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n].clone()
        } else {
            Dim::Known(1)
        }
    };
    (0..n)
        .map(|i| {
            let (da, db) = (at(a, i), at(b, i));
            if da == db || db.is_one() {
                Ok(da)
            } else if da.is_one() {
                Ok(db)
            } else {
                Err(Error::shape(
                    op,
                    format!(
                        "shapes {} and {} cannot be broadcast together ({da} vs {db})",
                        format_dims(a),
                        format_dims(b)
                    ),
                ))
            }
        })
        .collect()
}

/// Known product and symbols (sorted) of a shape.
fn factors(dims: &[Dim]) -> (u128, Vec<&str>) {
    let mut known = 1u128;
    let mut syms = Vec::new();
    for d in dims {
        match d {
            Dim::Known(n) => known = known.saturating_mul(*n as u128),
            Dim::Sym(s) => syms.push(s.as_str()),
        }
    }
    syms.sort_unstable();
    (known, syms)
}

/// One builder method per unary function, named like the eager op.
macro_rules! unary_methods {
    ($($name:ident => $op:ident),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "(x)` elementwise (see [`Graph::unary`]).")]
            pub fn $name(&mut self, x: ValueId) -> Result<ValueId> {
                self.unary(Unary::$op, x)
            }
        )*
    };
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// (name, value) of each input, in the order they were declared.
    pub fn inputs(&self) -> &[(String, ValueId)] {
        &self.inputs
    }

    /// (name, value) of each output, in the order they were declared.
    pub fn outputs(&self) -> &[(String, ValueId)] {
        &self.outputs
    }

    /// The type of value `v`.
    pub fn value_type(&self, v: ValueId) -> Result<&TensorType> {
        self.nodes.get(v).map(|n| &n.out).ok_or_else(|| {
            Error::index(
                "graph",
                format!(
                    "value %{v} does not exist (the graph has {})",
                    self.nodes.len()
                ),
            )
        })
    }

    fn ty(&self, v: ValueId) -> Result<TensorType> {
        self.value_type(v).cloned()
    }

    fn push(&mut self, op: Op, inputs: Vec<ValueId>, out: TensorType) -> ValueId {
        self.nodes.push(Node { op, inputs, out });
        self.nodes.len() - 1
    }

    /// Declares an input `name` of `dtype` whose dims may be symbols.
    pub fn input(&mut self, name: &str, dims: Vec<Dim>, dtype: DType) -> Result<ValueId> {
        if self.inputs.iter().any(|(n, _)| n == name) {
            return Err(Error::shape(
                "input",
                format!("an input named '{name}' already exists"),
            ));
        }
        if let Some(Dim::Sym(_)) = dims
            .iter()
            .find(|d| matches!(d, Dim::Sym(s) if s.is_empty()))
        {
            return Err(Error::shape(
                "input",
                format!("input '{name}': a symbolic dim needs a non-empty name"),
            ));
        }
        let id = self.push(
            Op::Input {
                name: name.to_owned(),
            },
            vec![],
            TensorType::new(dtype, dims),
        );
        self.inputs.push((name.to_owned(), id));
        Ok(id)
    }

    /// A fixed tensor (weights). The graph shares its storage: no copy.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        let ty = TensorType::new(t.dtype(), dims_of(&t));
        self.push(Op::Constant(t), vec![], ty)
    }

    /// Marks `v` as the output `name` of the graph.
    pub fn output(&mut self, name: &str, v: ValueId) -> Result<()> {
        self.value_type(v)?;
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Err(Error::shape(
                "output",
                format!("an output named '{name}' already exists"),
            ));
        }
        self.outputs.push((name.to_owned(), v));
        Ok(())
    }

    /// `a @ b` with numpy semantics: a f32; b f32, f16 or bf16; result f32.
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        const OP: &str = "matmul";
        let (ta, tb) = (self.ty(a)?, self.ty(b)?);
        if ta.dtype != DType::F32 || !is_gemm_weight(tb.dtype) {
            return Err(Error::dtype(
                OP,
                format!("needs f32 @ f32/f16/bf16, got {ta} @ {tb}"),
            ));
        }
        if ta.ndim() == 0 || tb.ndim() == 0 {
            return Err(Error::shape(
                OP,
                format!("operands must have at least one dimension, got {ta} @ {tb}"),
            ));
        }
        let mut a2 = ta.dims.clone();
        if a2.len() == 1 {
            a2.insert(0, Dim::Known(1));
        }
        let mut b2 = tb.dims.clone();
        if b2.len() == 1 {
            b2.push(Dim::Known(1));
        }
        let (m, k) = (&a2[a2.len() - 2], &a2[a2.len() - 1]);
        let (kb, n) = (&b2[b2.len() - 2], &b2[b2.len() - 1]);
        if k != kb {
            return Err(Error::shape(
                OP,
                format!(
                    "inner dimensions differ: {} @ {} ({k} != {kb})",
                    format_dims(&ta.dims),
                    format_dims(&tb.dims)
                ),
            ));
        }
        let mut dims = broadcast_dims(OP, &a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
        if ta.ndim() > 1 {
            dims.push(m.clone());
        }
        if tb.ndim() > 1 {
            dims.push(n.clone());
        }
        Ok(self.push(Op::MatMul, vec![a, b], TensorType::new(DType::F32, dims)))
    }

    /// `act(x · Wᵀ + bias)`: x f32 [..., in], w [out, in], bias f32 [out]; result f32 [..., out].
    pub fn linear(
        &mut self,
        x: ValueId,
        w: ValueId,
        bias: Option<ValueId>,
        activation: Activation,
    ) -> Result<ValueId> {
        self.linear_residual(x, w, bias, activation, None)
    }

    /// `act(x · Wᵀ + bias) + residual`: [`Graph::linear`] with the residual
    /// (f32, the output's shape) added in the GEMM epilogue.
    pub fn linear_residual(
        &mut self,
        x: ValueId,
        w: ValueId,
        bias: Option<ValueId>,
        activation: Activation,
        residual: Option<ValueId>,
    ) -> Result<ValueId> {
        const OP: &str = "linear";
        let (tx, tw) = (self.ty(x)?, self.ty(w)?);
        if tx.dtype != DType::F32 || !is_gemm_weight(tw.dtype) {
            return Err(Error::dtype(
                OP,
                format!("needs f32 input and f32/f16/bf16 weight, got {tx} and {tw}"),
            ));
        }
        if tx.ndim() == 0 || tw.ndim() != 2 {
            return Err(Error::shape(
                OP,
                format!(
                    "input must have at least one dimension and weight be 2-D [out, in], got {} and {}",
                    format_dims(&tx.dims),
                    format_dims(&tw.dims)
                ),
            ));
        }
        let (out_f, in_f) = (&tw.dims[0], &tw.dims[1]);
        let kx = &tx.dims[tx.ndim() - 1];
        if kx != in_f {
            return Err(Error::shape(
                OP,
                format!(
                    "input {} has {kx} features but the weight {} expects {in_f}",
                    format_dims(&tx.dims),
                    format_dims(&tw.dims)
                ),
            ));
        }
        let mut inputs = vec![x, w];
        if let Some(b) = bias {
            let tb = self.ty(b)?;
            if tb.dtype != DType::F32 {
                return Err(Error::dtype(OP, format!("bias must be f32, got {tb}")));
            }
            if tb.dims != [out_f.clone()] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "bias must be [{out_f}] (the weight's out features), got {}",
                        format_dims(&tb.dims)
                    ),
                ));
            }
            inputs.push(b);
        }
        let mut dims = tx.dims.clone();
        let last = dims.len() - 1;
        dims[last] = out_f.clone();
        let out = TensorType::new(DType::F32, dims);
        if let Some(r) = residual {
            let tr = self.ty(r)?;
            if tr != out {
                return Err(Error::shape(
                    OP,
                    format!("residual must be {out} (the output's type), got {tr}"),
                ));
            }
            inputs.push(r);
        }
        Ok(self.push(
            Op::Linear {
                activation,
                has_bias: bias.is_some(),
                has_residual: residual.is_some(),
                packed: None,
            },
            inputs,
            out,
        ))
    }

    /// Elementwise `op(a, b)` with broadcasting; both operands of one dtype.
    pub fn binary(&mut self, op: Binary, a: ValueId, b: ValueId) -> Result<ValueId> {
        let name = op.name();
        let (ta, tb) = (self.ty(a)?, self.ty(b)?);
        if ta.dtype != tb.dtype {
            return Err(Error::dtype(
                name,
                format!("operands have different dtypes: {ta} and {tb} (cast one first)"),
            ));
        }
        if ta.dtype == DType::Bool || (!ta.dtype.is_float() && !op.takes_integers()) {
            return Err(Error::dtype(
                name,
                format!("{name} is not defined for {} tensors", ta.dtype),
            ));
        }
        let dims = broadcast_dims(name, &ta.dims, &tb.dims)?;
        Ok(self.push(Op::Binary(op), vec![a, b], TensorType::new(ta.dtype, dims)))
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Add, a, b)
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Sub, a, b)
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Mul, a, b)
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Div, a, b)
    }
    /// Elementwise maximum (NaN propagates).
    pub fn maximum(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Max, a, b)
    }
    /// Elementwise minimum (NaN propagates).
    pub fn minimum(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Min, a, b)
    }
    /// `a ** b`, float tensors.
    pub fn pow(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Pow, a, b)
    }

    /// Elementwise `op(x)`: float tensors (neg, abs and relu also integers).
    pub fn unary(&mut self, op: Unary, x: ValueId) -> Result<ValueId> {
        let name = op.name();
        let tx = self.ty(x)?;
        if tx.dtype == DType::Bool || (!tx.dtype.is_float() && !op.takes_integers()) {
            return Err(Error::dtype(
                name,
                format!("{name} needs a float tensor, got {tx}"),
            ));
        }
        Ok(self.push(Op::Unary(op), vec![x], tx))
    }

    unary_methods!(
        exp => Exp, log => Log, tanh => Tanh, erf => Erf, gelu => Gelu, gelu_tanh => GeluTanh,
        silu => Silu, relu => Relu, sigmoid => Sigmoid, sqrt => Sqrt, rsqrt => Rsqrt,
        neg => Neg, abs => Abs,
    );

    pub fn softmax(&mut self, x: ValueId, axis: isize) -> Result<ValueId> {
        self.softmax_family(x, axis, false)
    }

    /// log(softmax(x)) over `axis`, computed stably.
    pub fn log_softmax(&mut self, x: ValueId, axis: isize) -> Result<ValueId> {
        self.softmax_family(x, axis, true)
    }

    fn softmax_family(&mut self, x: ValueId, axis: isize, log: bool) -> Result<ValueId> {
        let op = Op::Softmax { axis, log };
        let tx = self.ty(x)?;
        need_float(op.name(), "x", &tx)?;
        normalize_axis(op.name(), axis, tx.ndim())?;
        Ok(self.push(op, vec![x], tx))
    }

    /// Checks x and the optional per-feature parameters of a norm.
    fn norm_params(
        &self,
        op: &str,
        x: ValueId,
        params: &[(&str, Option<ValueId>)],
        eps: f64,
    ) -> Result<TensorType> {
        let tx = self.ty(x)?;
        need_float(op, "x", &tx)?;
        let Some(last) = tx.dims.last() else {
            return Err(Error::shape(
                op,
                "needs at least one dimension, got a 0-d tensor",
            ));
        };
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::shape(op, format!("eps must be >= 0, got {eps}")));
        }
        for &(what, p) in params {
            let Some(p) = p else { continue };
            let tp = self.ty(p)?;
            need_float(op, what, &tp)?;
            if tp.dims != [last.clone()] {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what} of shape {} does not match the normalized dimension of x {}",
                        format_dims(&tp.dims),
                        format_dims(&tx.dims)
                    ),
                ));
            }
        }
        Ok(tx)
    }

    /// Normalizes over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.
    pub fn layer_norm(
        &mut self,
        x: ValueId,
        weight: Option<ValueId>,
        bias: Option<ValueId>,
        eps: f64,
    ) -> Result<ValueId> {
        let tx = self.norm_params("layer_norm", x, &[("weight", weight), ("bias", bias)], eps)?;
        let inputs = std::iter::once(x).chain(weight).chain(bias).collect();
        let op = Op::LayerNorm {
            eps,
            has_weight: weight.is_some(),
            has_bias: bias.is_some(),
        };
        Ok(self.push(op, inputs, tx))
    }

    /// x / sqrt(mean(x²) + eps) * weight over the last dimension.
    pub fn rms_norm(&mut self, x: ValueId, weight: Option<ValueId>, eps: f64) -> Result<ValueId> {
        let tx = self.norm_params("rms_norm", x, &[("weight", weight)], eps)?;
        let inputs = std::iter::once(x).chain(weight).collect();
        let op = Op::RmsNorm {
            eps,
            has_weight: weight.is_some(),
        };
        Ok(self.push(op, inputs, tx))
    }

    /// Rotary embedding of x [batch, seq, heads, head_dim] (see [`RopeArgs`]).
    /// head_dim must be a known number, so that rotary_dim and inv_freq are
    /// checked here rather than in a run.
    pub fn rope(&mut self, x: ValueId, args: &RopeArgs) -> Result<ValueId> {
        const OP: &str = "rope";
        let tx = self.ty(x)?;
        need_float(OP, "x", &tx)?;
        let shape = || format_dims(&tx.dims);
        if tx.ndim() != 4 {
            return Err(Error::shape(
                OP,
                format!(
                    "x must have shape [batch, seq, heads, head_dim], got {}",
                    shape()
                ),
            ));
        }
        let Dim::Known(head_dim) = tx.dims[3] else {
            return Err(Error::shape(
                OP,
                format!("head_dim of x {} must be a known number", shape()),
            ));
        };
        let rotary_dim = args.rotary_dim.unwrap_or(head_dim);
        if !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            return Err(Error::shape(
                OP,
                format!(
                    "rotary_dim {rotary_dim} must be even and at most head_dim {head_dim} (x {})",
                    shape()
                ),
            ));
        }
        let mut inputs = vec![x];
        if let Some(p) = args.positions {
            let tp = self.ty(p)?;
            if !is_integer(tp.dtype) {
                return Err(Error::dtype(
                    OP,
                    format!("positions must be an integer tensor, got {tp}"),
                ));
            }
            let (batch, seq) = (&tx.dims[0], &tx.dims[1]);
            if tp.dims != [seq.clone()] && tp.dims != [batch.clone(), seq.clone()] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "positions of shape {} must be [batch, seq] = [{batch}, {seq}] or [seq] (x {})",
                        format_dims(&tp.dims),
                        shape()
                    ),
                ));
            }
            inputs.push(p);
        }
        match args.inv_freq {
            Some(f) => {
                let tf = self.ty(f)?;
                need_float(OP, "inv_freq", &tf)?;
                if tf.dims != [Dim::Known(rotary_dim / 2)] {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "inv_freq must have shape [{}] (rotary_dim / 2), got {}",
                            rotary_dim / 2,
                            format_dims(&tf.dims)
                        ),
                    ));
                }
                inputs.push(f);
            }
            None if args.theta.is_nan() || args.theta <= 0.0 => {
                return Err(Error::shape(
                    OP,
                    format!("theta must be > 0, got {}", args.theta),
                ));
            }
            None => {}
        }
        let op = Op::Rope {
            theta: args.theta,
            interleaved: args.interleaved,
            offset: args.offset,
            rotary_dim: args.rotary_dim,
            has_positions: args.positions.is_some(),
            has_inv_freq: args.inv_freq.is_some(),
        };
        Ok(self.push(op, inputs, tx))
    }

    /// Fused attention over q [b, sq, hq, d], k [b, sk, hkv, d], v [b, sk, hkv, dv] -> f32 [b, sq, hq, dv].
    /// `key_padding_mask` is [b, sk], bool or integer, nonzero = attend. `segments`
    /// (integer [n + 1] offsets) packs sequences along seq: batch 1, sq == sk, and rows
    /// `o[s]..o[s+1]` attend only each other (see `ops::attention`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: ValueId,
        k: ValueId,
        v: ValueId,
        causal: bool,
        scale: Option<f32>,
        key_padding_mask: Option<ValueId>,
        segments: Option<ValueId>,
    ) -> Result<ValueId> {
        let spec = AttentionSpec {
            causal,
            scale,
            key_padding_mask,
            segments,
            append: None,
        };
        self.attention_with(q, k, v, spec)
    }

    /// [`Graph::attention`] from a spec with every optional input, appended keys included:
    /// `append` = (k_append [b, n, hkv, d], v_append [b, n, hkv, dv]) are keys after k and
    /// v along seq, read in place (a decoder's new tokens beside its cache); the padding
    /// mask covers k only. Not with `segments`.
    pub fn attention_with(
        &mut self,
        q: ValueId,
        k: ValueId,
        v: ValueId,
        spec: AttentionSpec,
    ) -> Result<ValueId> {
        const OP: &str = "attention";
        let AttentionSpec {
            causal,
            scale,
            key_padding_mask,
            segments,
            append,
        } = spec;
        let (tq, tk, tv) = (self.ty(q)?, self.ty(k)?, self.ty(v)?);
        for (name, t) in [("q", &tq), ("k", &tk), ("v", &tv)] {
            if !is_gemm_weight(t.dtype) {
                return Err(Error::dtype(
                    OP,
                    format!("{name} must be f32, f16 or bf16, got {t}"),
                ));
            }
        }
        let shapes = || {
            format!(
                "q {}, k {}, v {}",
                format_dims(&tq.dims),
                format_dims(&tk.dims),
                format_dims(&tv.dims)
            )
        };
        if tq.ndim() != 4 || tk.ndim() != 4 || tv.ndim() != 4 {
            return Err(Error::shape(
                OP,
                format!(
                    "q, k, v must be 4-D [batch, seq, heads, head_dim], got {}",
                    shapes()
                ),
            ));
        }
        let (qd, kd, vd) = (&tq.dims, &tk.dims, &tv.dims);
        let problem = if kd[0] != qd[0] || vd[0] != qd[0] {
            Some("batch sizes differ")
        } else if vd[1] != kd[1] {
            Some("k and v have different sequence lengths")
        } else if vd[2] != kd[2] {
            Some("k and v have different head counts")
        } else if kd[3] != qd[3] {
            Some("q and k have different head_dim")
        } else {
            match (&qd[2], &kd[2]) {
                (Dim::Known(hq), Dim::Known(hkv))
                    if (*hkv == 0 && *hq != 0) || (*hkv != 0 && hq % hkv != 0) =>
                {
                    Some("heads of q must be a multiple of the heads of k and v")
                }
                _ => None,
            }
        };
        if let Some(p) = problem {
            return Err(Error::shape(OP, format!("{p}: {}", shapes())));
        }
        let mut inputs = vec![q, k, v];
        if let Some(m) = key_padding_mask {
            let tm = self.ty(m)?;
            if tm.dtype.is_float() {
                return Err(Error::dtype(
                    OP,
                    format!(
                        "key_padding_mask must be bool or integer (nonzero = attend), got {tm}"
                    ),
                ));
            }
            let (batch, seq_k) = (&qd[0], &kd[1]);
            if tm.dims != [batch.clone(), seq_k.clone()] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "key_padding_mask must be [batch, seq_k] = [{batch}, {seq_k}], got {} ({})",
                        format_dims(&tm.dims),
                        shapes()
                    ),
                ));
            }
            inputs.push(m);
        }
        if let Some(s) = segments {
            let ts = self.ty(s)?;
            if ts.dtype.is_float() || ts.dtype == DType::Bool || ts.ndim() != 1 {
                return Err(Error::dtype(
                    OP,
                    format!("segments must be 1-D integer offsets [n + 1], got {ts}"),
                ));
            }
            if matches!(qd[0], Dim::Known(b) if b != 1) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "segments pack sequences along seq: batch must be 1 ({})",
                        shapes()
                    ),
                ));
            }
            if qd[1] != kd[1] {
                return Err(Error::shape(
                    OP,
                    format!("segments need seq_q == seq_k ({})", shapes()),
                ));
            }
            inputs.push(s);
        }
        if let Some((ka, va)) = append {
            if segments.is_some() {
                return Err(Error::Unsupported(format!(
                    "{OP}: appended keys cannot be combined with segments"
                )));
            }
            let (tka, tva) = (self.ty(ka)?, self.ty(va)?);
            if !is_gemm_weight(tka.dtype) || !is_gemm_weight(tva.dtype) {
                return Err(Error::dtype(
                    OP,
                    format!("k_append and v_append must be f32, f16 or bf16, got {tka} and {tva}"),
                ));
            }
            let n = tka.dims.get(1).cloned().unwrap_or(Dim::Known(0));
            let want_k = [qd[0].clone(), n.clone(), kd[2].clone(), kd[3].clone()];
            let want_v = [qd[0].clone(), n, kd[2].clone(), vd[3].clone()];
            if tka.dims != want_k || tva.dims != want_v {
                return Err(Error::shape(
                    OP,
                    format!(
                        "k_append and v_append must be {} and {} (batch, n, heads and head dims of k and v), got {} and {}",
                        format_dims(&want_k),
                        format_dims(&want_v),
                        format_dims(&tka.dims),
                        format_dims(&tva.dims)
                    ),
                ));
            }
            inputs.extend([ka, va]);
        }
        let dims = vec![qd[0].clone(), qd[1].clone(), qd[2].clone(), vd[3].clone()];
        let op = Op::Attention {
            causal,
            scale,
            has_key_padding_mask: key_padding_mask.is_some(),
            has_segments: segments.is_some(),
            has_append: append.is_some(),
        };
        Ok(self.push(op, inputs, TensorType::new(DType::F32, dims)))
    }

    /// `weight[ids]`: weight [vocab, dim], integer ids; result [*ids, dim] of weight's dtype.
    pub fn embedding(&mut self, weight: ValueId, ids: ValueId) -> Result<ValueId> {
        const OP: &str = "embedding";
        let (tw, ti) = (self.ty(weight)?, self.ty(ids)?);
        if tw.ndim() != 2 {
            return Err(Error::shape(
                OP,
                format!(
                    "weight must have shape [vocab, dim], got {}",
                    format_dims(&tw.dims)
                ),
            ));
        }
        if ti.dtype.is_float() || ti.dtype == DType::Bool {
            return Err(Error::dtype(
                OP,
                format!("ids must be an integer tensor, got {ti}"),
            ));
        }
        let mut dims = ti.dims.clone();
        dims.push(tw.dims[1].clone());
        Ok(self.push(
            Op::Embedding,
            vec![weight, ids],
            TensorType::new(tw.dtype, dims),
        ))
    }

    /// Reshape to `shape`, where `None` is the one dim to infer (`-1`). Symbols
    /// must carry over: a `-1` may stand for a number or for one symbol of the
    /// input, never for a product involving symbols.
    pub fn reshape(&mut self, x: ValueId, shape: &[Option<Dim>]) -> Result<ValueId> {
        const OP: &str = "reshape";
        let tx = self.ty(x)?;
        let spec = || {
            let parts: Vec<String> = shape
                .iter()
                .map(|d| d.as_ref().map_or("-1".to_owned(), Dim::to_string))
                .collect();
            format!("[{}]", parts.join(", "))
        };
        let fail = |why: &str| {
            Err(Error::shape(
                OP,
                format!(
                    "cannot reshape {} to {}: {why}",
                    format_dims(&tx.dims),
                    spec()
                ),
            ))
        };
        let infer: Vec<usize> = (0..shape.len()).filter(|&i| shape[i].is_none()).collect();
        if infer.len() > 1 {
            return fail("only one dimension may be -1");
        }
        let given: Vec<Dim> = shape.iter().flatten().cloned().collect();
        let (pi, si) = factors(&tx.dims);
        let (pt, st) = factors(&given);
        let mut rest = si.clone();
        for s in &st {
            match rest.iter().position(|r| r == s) {
                Some(i) => {
                    rest.remove(i);
                }
                None => return fail(&format!("symbol '{s}' is not a dim of the input")),
            }
        }
        let inferred =
            match (infer.first(), rest.as_slice()) {
                (None, []) if pi == pt => None,
                (None, []) => return fail(&format!("{pi} elements per symbol binding vs {pt}")),
                (None, _) => return fail("the input's symbols must all appear in the new shape"),
                (Some(_), []) if pt != 0 && pi % pt == 0 => Some(Dim::Known((pi / pt) as usize)),
                (Some(_), [s]) if pi == pt => Some(Dim::sym(*s)),
                (Some(_), _) => return fail(
                    "-1 would have to be a product involving symbols, which dims cannot express",
                ),
            };
        let dims: Vec<Dim> = shape
            .iter()
            .map(|d| {
                d.clone()
                    .or_else(|| inferred.clone())
                    .unwrap_or(Dim::Known(0))
            })
            .collect();
        let out = TensorType::new(tx.dtype, dims.clone());
        Ok(self.push(Op::Reshape { dims }, vec![x], out))
    }

    /// Permutes the dims of x (the result is contiguous).
    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        const OP: &str = "transpose";
        let tx = self.ty(x)?;
        let mut seen = vec![false; tx.ndim()];
        let valid = perm.len() == tx.ndim()
            && perm
                .iter()
                .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::shape(
                OP,
                format!(
                    "perm {perm:?} is not a permutation of the {} dims of {}",
                    tx.ndim(),
                    format_dims(&tx.dims)
                ),
            ));
        }
        let dims = perm.iter().map(|&p| tx.dims[p].clone()).collect();
        Ok(self.push(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            vec![x],
            TensorType::new(tx.dtype, dims),
        ))
    }

    /// Joins values of one dtype along `axis` (which must be known in each).
    pub fn concat(&mut self, values: &[ValueId], axis: isize) -> Result<ValueId> {
        const OP: &str = "concat";
        let types: Vec<TensorType> = values.iter().map(|&v| self.ty(v)).collect::<Result<_>>()?;
        let Some(first) = types.first() else {
            return Err(Error::shape(OP, "needs at least one value"));
        };
        let axis = normalize_axis(OP, axis, first.ndim())?;
        let all = || {
            let parts: Vec<String> = types.iter().map(|t| t.to_string()).collect();
            parts.join(", ")
        };
        if types.iter().any(|t| t.dtype != first.dtype) {
            return Err(Error::dtype(
                OP,
                format!("values have different dtypes: {}", all()),
            ));
        }
        let fits = |t: &TensorType| {
            t.ndim() == first.ndim()
                && t.dims
                    .iter()
                    .zip(&first.dims)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b)
        };
        if !types.iter().all(fits) {
            return Err(Error::shape(
                OP,
                format!("shapes differ outside axis {axis}: {}", all()),
            ));
        }
        let mut total = 0usize;
        for t in &types {
            match &t.dims[axis] {
                Dim::Known(n) => total += n,
                Dim::Sym(s) if types.len() > 1 => {
                    return Err(Error::Unsupported(format!(
                        "{OP}: joining along the symbolic dim '{s}' ({})",
                        all()
                    )))
                }
                Dim::Sym(_) => {}
            }
        }
        let mut dims = first.dims.clone();
        if types.len() > 1 {
            dims[axis] = Dim::Known(total);
        }
        Ok(self.push(
            Op::Concat { axis },
            values.to_vec(),
            TensorType::new(first.dtype, dims),
        ))
    }

    /// Reduces x over `axis` (None: every element). Result dtypes follow the
    /// eager op (numpy): sum of integers/bool is i64, mean of them f64, argmax
    /// i64, otherwise x's dtype.
    pub fn reduce(
        &mut self,
        kind: Reduce,
        x: ValueId,
        axis: Option<isize>,
        keepdims: bool,
    ) -> Result<ValueId> {
        let name = kind.name();
        let tx = self.ty(x)?;
        let dtype = match kind {
            _ if tx.dtype.is_float() && kind != Reduce::ArgMax => tx.dtype,
            Reduce::Sum | Reduce::ArgMax => DType::I64,
            Reduce::Mean => DType::F64,
            Reduce::Max | Reduce::Min => tx.dtype,
        };
        let reduced: Vec<usize> = match axis {
            None => (0..tx.ndim()).collect(),
            Some(a) => vec![normalize_axis(name, a, tx.ndim())?],
        };
        let dims = tx
            .dims
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (reduced.contains(&i), keepdims) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(Dim::Known(1)),
                (true, false) => None,
            })
            .collect();
        // max, min and argmax of nothing have no value: refuse a reduced
        // extent known to be empty unless the result is empty as well.
        let is_zero = |i: &usize| tx.dims[*i] == Dim::Known(0);
        let empty_reduced = reduced.iter().any(is_zero);
        let empty_result = (0..tx.ndim()).any(|i| !reduced.contains(&i) && is_zero(&i));
        if matches!(kind, Reduce::Max | Reduce::Min | Reduce::ArgMax)
            && empty_reduced
            && !empty_result
        {
            return Err(Error::shape(
                name,
                format!(
                    "cannot take {name} over an empty extent of {} (axis {axis:?}; no identity)",
                    format_dims(&tx.dims)
                ),
            ));
        }
        let op = Op::Reduce {
            kind,
            axis,
            keepdims,
        };
        Ok(self.push(op, vec![x], TensorType::new(dtype, dims)))
    }

    /// Sum over `axis` (None: all elements).
    pub fn sum(&mut self, x: ValueId, axis: Option<isize>, keepdims: bool) -> Result<ValueId> {
        self.reduce(Reduce::Sum, x, axis, keepdims)
    }

    /// Mean over `axis` (None: all elements).
    pub fn mean(&mut self, x: ValueId, axis: Option<isize>, keepdims: bool) -> Result<ValueId> {
        self.reduce(Reduce::Mean, x, axis, keepdims)
    }

    /// Maximum over `axis` (None: all elements); NaN propagates.
    pub fn max(&mut self, x: ValueId, axis: Option<isize>, keepdims: bool) -> Result<ValueId> {
        self.reduce(Reduce::Max, x, axis, keepdims)
    }

    /// Minimum over `axis` (None: all elements); NaN propagates.
    pub fn min(&mut self, x: ValueId, axis: Option<isize>, keepdims: bool) -> Result<ValueId> {
        self.reduce(Reduce::Min, x, axis, keepdims)
    }

    /// i64 index of the first maximum over `axis` (None: of the flattened x).
    pub fn argmax(&mut self, x: ValueId, axis: Option<isize>, keepdims: bool) -> Result<ValueId> {
        self.reduce(Reduce::ArgMax, x, axis, keepdims)
    }

    /// `x[start:stop:step]` along `axis`, numpy semantics (negative indices
    /// count from the end, out-of-range bounds clamp); the result is contiguous.
    /// Along a symbolic dim only the whole range is accepted, since the length
    /// of any other slice of it is not a dim the graph can express.
    pub fn slice(
        &mut self,
        x: ValueId,
        axis: isize,
        start: Option<isize>,
        stop: Option<isize>,
        step: isize,
    ) -> Result<ValueId> {
        const OP: &str = "slice";
        let tx = self.ty(x)?;
        let axis = normalize_axis(OP, axis, tx.ndim())?;
        if step == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "step cannot be zero (x {}, axis {axis})",
                    format_dims(&tx.dims)
                ),
            ));
        }
        let len = match &tx.dims[axis] {
            Dim::Known(n) => Dim::Known(slice_indices(start, stop, step, *n)?.1),
            Dim::Sym(s) => {
                let whole = stop.is_none()
                    && (matches!((start, step), (None, 1 | -1)) || (start, step) == (Some(0), 1));
                if !whole {
                    return Err(Error::Unsupported(format!(
                        "{OP}: a slice of the symbolic dim '{s}' of {} (axis {axis}) has a length the graph cannot express; slice a known dim",
                        format_dims(&tx.dims)
                    )));
                }
                Dim::sym(s.as_str())
            }
        };
        let mut dims = tx.dims.clone();
        dims[axis] = len;
        let op = Op::Slice {
            axis,
            start,
            stop,
            step,
        };
        Ok(self.push(op, vec![x], TensorType::new(tx.dtype, dims)))
    }

    /// `cond ? a : b` elementwise with broadcasting: cond bool, a and b of one dtype.
    pub fn where_(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> Result<ValueId> {
        const OP: &str = "where";
        let (tc, ta, tb) = (self.ty(cond)?, self.ty(a)?, self.ty(b)?);
        if tc.dtype != DType::Bool {
            return Err(Error::dtype(OP, format!("cond must be bool, got {tc}")));
        }
        if ta.dtype != tb.dtype {
            return Err(Error::dtype(
                OP,
                format!("a and b have different dtypes: {ta} and {tb} (cast one first)"),
            ));
        }
        let dims = broadcast_dims(OP, &ta.dims, &tb.dims)
            .and_then(|d| broadcast_dims(OP, &d, &tc.dims))
            .map_err(|_| {
                Error::shape(
                    OP,
                    format!(
                        "cond {}, a {} and b {} cannot be broadcast together",
                        format_dims(&tc.dims),
                        format_dims(&ta.dims),
                        format_dims(&tb.dims)
                    ),
                )
            })?;
        Ok(self.push(Op::Where, vec![cond, a, b], TensorType::new(ta.dtype, dims)))
    }

    /// x with `value` (converted to x's dtype) wherever the bool mask is true;
    /// mask broadcasts to x's shape.
    pub fn masked_fill(&mut self, x: ValueId, mask: ValueId, value: f64) -> Result<ValueId> {
        const OP: &str = "masked_fill";
        let (tx, tm) = (self.ty(x)?, self.ty(mask)?);
        if tm.dtype != DType::Bool {
            return Err(Error::dtype(OP, format!("mask must be bool, got {tm}")));
        }
        let fits = broadcast_dims(OP, &tx.dims, &tm.dims).is_ok_and(|d| d == tx.dims);
        if !fits {
            return Err(Error::shape(
                OP,
                format!(
                    "mask of shape {} does not broadcast to x's shape {}",
                    format_dims(&tm.dims),
                    format_dims(&tx.dims)
                ),
            ));
        }
        Ok(self.push(Op::MaskedFill { value }, vec![x, mask], tx))
    }

    /// The k largest (or smallest) entries of x along `axis`, sorted: two
    /// values, (values of x's dtype, i64 indices), each x's shape with `axis`
    /// shortened to k. The axis must be a known dim (k is checked against it).
    pub fn topk(
        &mut self,
        x: ValueId,
        k: usize,
        axis: isize,
        largest: bool,
    ) -> Result<(ValueId, ValueId)> {
        const OP: &str = "topk";
        let tx = self.ty(x)?;
        if tx.dtype == DType::Bool {
            return Err(Error::dtype(
                OP,
                format!("topk is not defined for bool tensors, got {tx}"),
            ));
        }
        let axis = normalize_axis(OP, axis, tx.ndim())?;
        match &tx.dims[axis] {
            Dim::Known(n) if k > *n => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "k={k} is larger than the size {n} of axis {axis} of {}",
                        format_dims(&tx.dims)
                    ),
                ))
            }
            Dim::Known(_) => {}
            Dim::Sym(s) => {
                return Err(Error::Unsupported(format!(
                    "{OP}: along the symbolic dim '{s}' of {} (axis {axis}), k={k} cannot be checked when the graph is built",
                    format_dims(&tx.dims)
                )))
            }
        }
        let mut dims = tx.dims.clone();
        dims[axis] = Dim::Known(k);
        let node = |output| Op::TopK {
            k,
            axis,
            largest,
            output,
        };
        let values = self.push(
            node(TopKOutput::Values),
            vec![x],
            TensorType::new(tx.dtype, dims.clone()),
        );
        let indices = self.push(
            node(TopKOutput::Indices),
            vec![x],
            TensorType::new(DType::I64, dims),
        );
        Ok((values, indices))
    }

    pub fn cast(&mut self, x: ValueId, dtype: DType) -> Result<ValueId> {
        let tx = self.ty(x)?;
        Ok(self.push(Op::Cast { dtype }, vec![x], TensorType::new(dtype, tx.dims)))
    }

    /// Symbols of the inputs, each with the first input and dim that defines it.
    pub fn symbols(&self) -> HashMap<String, (String, usize)> {
        let mut out = HashMap::new();
        for (name, id) in &self.inputs {
            for (i, d) in self.nodes[*id].out.dims.iter().enumerate() {
                if let Dim::Sym(s) = d {
                    out.entry(s.clone()).or_insert((name.clone(), i));
                }
            }
        }
        out
    }

    /// A graph from its parts, as rewrites (`crate::passes`) assemble them.
    /// Nothing is checked here: [`super::verify::verify`] checks the
    /// invariants the builder methods guarantee.
    pub(crate) fn from_parts(
        nodes: Vec<Node>,
        inputs: Vec<(String, ValueId)>,
        outputs: Vec<(String, ValueId)>,
    ) -> Graph {
        Graph {
            nodes,
            inputs,
            outputs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(names: &[&str]) -> Vec<Dim> {
        names
            .iter()
            .map(|n| n.parse().map(Dim::Known).unwrap_or_else(|_| Dim::sym(*n)))
            .collect()
    }

    #[test]
    fn infers_through_an_mlp() {
        let mut g = Graph::new();
        let x = g.input("x", syms(&["batch", "384"]), DType::F32).unwrap();
        let w = g.constant(Tensor::zeros(DType::F32, &[10, 384]).unwrap());
        let b = g.constant(Tensor::zeros(DType::F32, &[10]).unwrap());
        let h = g.linear(x, w, Some(b), Activation::Gelu).unwrap();
        let s = g.softmax(h, -1).unwrap();
        assert_eq!(g.value_type(s).unwrap().to_string(), "f32[batch, 10]");
        let m = g.mean(s, Some(-1), true).unwrap();
        assert_eq!(g.value_type(m).unwrap().dims, syms(&["batch", "1"]));
    }

    #[test]
    fn rejects_bad_nodes_naming_op_and_shapes() {
        let mut g = Graph::new();
        let x = g.input("x", syms(&["batch", "384"]), DType::F32).unwrap();
        let w = g.constant(Tensor::zeros(DType::F32, &[500, 10]).unwrap());
        let e = g.matmul(x, w).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        let e = e.to_string();
        assert!(
            e.contains("matmul") && e.contains("[batch, 384]") && e.contains("[500, 10]"),
            "{e}"
        );
        let i = g.input("i", syms(&["batch", "384"]), DType::I64).unwrap();
        assert!(matches!(g.add(x, i), Err(Error::DType { .. })));
        let y = g.input("y", syms(&["seq", "384"]), DType::F32).unwrap();
        let e = g.add(x, y).unwrap_err().to_string();
        assert!(
            e.contains("add") && e.contains("batch") && e.contains("seq"),
            "{e}"
        );
        assert!(g.input("x", vec![], DType::F32).is_err());
    }

    #[test]
    fn broadcasting_and_reshape_with_symbols() {
        let mut g = Graph::new();
        let x = g
            .input("x", syms(&["batch", "seq", "384"]), DType::F32)
            .unwrap();
        let one = g
            .input("one", syms(&["1", "seq", "1"]), DType::F32)
            .unwrap();
        let y = g.mul(x, one).unwrap();
        assert_eq!(
            g.value_type(y).unwrap().dims,
            syms(&["batch", "seq", "384"])
        );
        let heads = g
            .reshape(
                y,
                &[
                    Some(Dim::sym("batch")),
                    Some(Dim::sym("seq")),
                    Some(Dim::Known(12)),
                    None,
                ],
            )
            .unwrap();
        assert_eq!(
            g.value_type(heads).unwrap().dims,
            syms(&["batch", "seq", "12", "32"])
        );
        let back = g
            .reshape(heads, &[None, Some(Dim::sym("seq")), Some(Dim::Known(384))])
            .unwrap();
        assert_eq!(
            g.value_type(back).unwrap().dims,
            syms(&["batch", "seq", "384"])
        );
        let flat = g
            .reshape(x, &[None, Some(Dim::Known(384))])
            .unwrap_err()
            .to_string();
        assert!(
            flat.contains("reshape") && flat.contains("[batch, seq, 384]"),
            "{flat}"
        );
        assert!(g
            .reshape(x, &[Some(Dim::sym("batch")), Some(Dim::Known(384)), None])
            .is_ok());
        let t = g.transpose(heads, &[0, 2, 1, 3]).unwrap();
        assert_eq!(
            g.value_type(t).unwrap().dims,
            syms(&["batch", "12", "seq", "32"])
        );
        assert!(g.transpose(heads, &[0, 0, 1, 3]).is_err());
        let c = g.concat(&[heads, heads], -1).unwrap();
        assert_eq!(
            g.value_type(c).unwrap().dims,
            syms(&["batch", "seq", "12", "64"])
        );
        assert!(matches!(g.concat(&[x, x], 0), Err(Error::Unsupported(_))));
    }

    #[test]
    fn attention_and_embedding_types() {
        let mut g = Graph::new();
        let q = g
            .input("q", syms(&["b", "s", "8", "16"]), DType::F32)
            .unwrap();
        let kv = g
            .input("kv", syms(&["b", "t", "2", "16"]), DType::F32)
            .unwrap();
        let a = g.attention(q, kv, kv, true, None, None, None).unwrap();
        assert_eq!(g.value_type(a).unwrap().dims, syms(&["b", "s", "8", "16"]));
        let bad = g
            .input("bad", syms(&["b", "t", "3", "16"]), DType::F32)
            .unwrap();
        assert!(g.attention(q, bad, bad, false, None, None, None).is_err());
        let w = g.constant(Tensor::zeros(DType::F32, &[100, 16]).unwrap());
        let ids = g.input("ids", syms(&["b", "s"]), DType::I64).unwrap();
        let e = g.embedding(w, ids).unwrap();
        assert_eq!(g.value_type(e).unwrap().to_string(), "f32[b, s, 16]");
        assert!(matches!(g.embedding(w, q), Err(Error::DType { .. })));
    }

    fn shape_err(r: Result<ValueId>, needles: &[&str]) {
        let e = r.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Shape { .. }), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "'{n}' not in: {msg}");
        }
    }

    fn dtype_err(r: Result<ValueId>, op: &str) {
        let e = r.unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, Error::DType { .. }) && msg.contains(op),
            "{msg}"
        );
    }

    fn ty(g: &Graph, v: ValueId) -> String {
        g.value_type(v).unwrap().to_string()
    }

    /// The type of the value `build` adds, as a string.
    fn typed(g: &mut Graph, build: impl FnOnce(&mut Graph) -> Result<ValueId>) -> String {
        let v = build(g).unwrap();
        ty(g, v)
    }

    #[test]
    fn elementwise_softmax_and_reductions_types_and_errors() {
        let mut g = Graph::new();
        let x = g.input("x", syms(&["b", "7"]), DType::F32).unwrap();
        let i = g.input("i", syms(&["b", "7"]), DType::I32).unwrap();
        let row = g.input("row", syms(&["7"]), DType::F32).unwrap();
        let m = g.maximum(x, row).unwrap();
        assert_eq!(ty(&g, m), "f32[b, 7]");
        let m = g.minimum(i, i).unwrap();
        assert_eq!(ty(&g, m), "i32[b, 7]");
        dtype_err(g.pow(i, i), "pow");
        for f in [
            Graph::sigmoid,
            Graph::erf,
            Graph::sqrt,
            Graph::rsqrt,
            Graph::log,
        ] {
            assert_eq!(typed(&mut g, |g| f(g, x)), "f32[b, 7]");
            assert!(matches!(f(&mut g, i), Err(Error::DType { .. })));
        }
        assert_eq!(typed(&mut g, |g| g.abs(i)), "i32[b, 7]");
        let ls = g.log_softmax(x, 0).unwrap();
        assert_eq!(g.nodes()[ls].op.name(), "log_softmax");
        dtype_err(g.log_softmax(i, -1), "log_softmax");
        shape_err(g.log_softmax(x, 2), &["log_softmax"]);

        assert_eq!(typed(&mut g, |g| g.max(x, Some(-1), true)), "f32[b, 1]");
        assert_eq!(typed(&mut g, |g| g.min(i, Some(0), false)), "i32[7]");
        assert_eq!(typed(&mut g, |g| g.argmax(x, Some(1), false)), "i64[b]");
        assert_eq!(typed(&mut g, |g| g.argmax(x, None, false)), "i64[]");
        assert_eq!(typed(&mut g, |g| g.sum(i, None, true)), "i64[1, 1]");
        assert_eq!(typed(&mut g, |g| g.mean(i, Some(1), false)), "f64[b]");
        shape_err(g.argmax(x, Some(2), false), &["argmax"]);
        let empty = g.input("empty", syms(&["b", "0"]), DType::F32).unwrap();
        shape_err(g.max(empty, Some(1), false), &["max", "[b, 0]"]);
        shape_err(g.argmax(empty, None, false), &["argmax", "[b, 0]"]);
        assert!(
            g.max(empty, Some(0), false).is_ok(),
            "an empty result is fine"
        );
        assert!(g.sum(empty, Some(1), false).is_ok(), "sum has an identity");
    }

    #[test]
    fn where_and_masked_fill_broadcast_over_symbols() {
        let mut g = Graph::new();
        let x = g.input("x", syms(&["b", "s", "8"]), DType::F32).unwrap();
        let mask = g
            .input("mask", syms(&["b", "s", "1"]), DType::Bool)
            .unwrap();
        let row = g.input("row", syms(&["8"]), DType::F32).unwrap();
        let w = g.where_(mask, x, row).unwrap();
        assert_eq!(ty(&g, w), "f32[b, s, 8]");
        let f = g.masked_fill(x, mask, f64::NEG_INFINITY).unwrap();
        assert_eq!(ty(&g, f), "f32[b, s, 8]");
        dtype_err(g.where_(x, x, row), "where");
        let i = g.input("i", syms(&["8"]), DType::I64).unwrap();
        dtype_err(g.where_(mask, x, i), "where");
        let other = g.input("other", syms(&["t", "8"]), DType::F32).unwrap();
        shape_err(
            g.where_(mask, x, other),
            &["where", "[b, s, 1]", "[b, s, 8]", "[t, 8]"],
        );
        dtype_err(g.masked_fill(x, x, 0.0), "masked_fill");
        // The mask may broadcast, but the result keeps x's shape.
        let wide = g
            .input("wide", syms(&["b", "s", "8"]), DType::Bool)
            .unwrap();
        shape_err(
            g.masked_fill(row, wide, 0.0),
            &["masked_fill", "[b, s, 8]", "[8]"],
        );
    }

    #[test]
    fn topk_and_slice_types_and_errors() {
        let mut g = Graph::new();
        let x = g.input("x", syms(&["b", "s", "33"]), DType::F32).unwrap();
        let (v, i) = g.topk(x, 5, -1, true).unwrap();
        assert_eq!(
            (ty(&g, v), ty(&g, i)),
            ("f32[b, s, 5]".into(), "i64[b, s, 5]".into())
        );
        assert_eq!(
            g.nodes()[i].op.attributes(),
            "k=5, axis=2, largest=true, output=indices"
        );
        let e = g.topk(x, 34, 2, true).unwrap_err().to_string();
        assert!(
            e.contains("topk") && e.contains("[b, s, 33]") && e.contains("34"),
            "{e}"
        );
        assert!(matches!(g.topk(x, 1, 1, true), Err(Error::Unsupported(_))));
        let flags = g.input("flags", syms(&["4"]), DType::Bool).unwrap();
        assert!(matches!(
            g.topk(flags, 1, 0, true),
            Err(Error::DType { .. })
        ));

        let s = g.slice(x, -1, Some(-10), None, 1).unwrap();
        assert_eq!(ty(&g, s), "f32[b, s, 10]");
        let s = g.slice(x, 2, None, None, -3).unwrap();
        assert_eq!(ty(&g, s), "f32[b, s, 11]");
        let s = g.slice(x, 2, Some(40), Some(50), 1).unwrap();
        assert_eq!(ty(&g, s), "f32[b, s, 0]");
        let s = g.slice(x, 1, Some(0), None, 1).unwrap();
        assert_eq!(ty(&g, s), "f32[b, s, 33]");
        shape_err(
            g.slice(x, 2, None, None, 0),
            &["slice", "[b, s, 33]", "zero"],
        );
        shape_err(g.slice(x, 3, None, None, 1), &["slice"]);
        let e = g.slice(x, 1, Some(-1), None, 1).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains("slice") && m.contains("'s'")),
            "{e}"
        );
    }

    #[test]
    fn rope_positions_and_attention_mask_are_checked() {
        let mut g = Graph::new();
        let x = g
            .input("x", syms(&["b", "s", "4", "16"]), DType::F32)
            .unwrap();
        let pos = g.input("pos", syms(&["b", "s"]), DType::I64).unwrap();
        let pos1 = g.input("pos1", syms(&["s"]), DType::I32).unwrap();
        let freq = g.constant(Tensor::zeros(DType::F32, &[4]).unwrap());
        for positions in [Some(pos), Some(pos1), None] {
            let args = RopeArgs {
                positions,
                offset: 3,
                rotary_dim: Some(8),
                inv_freq: Some(freq),
                ..RopeArgs::default()
            };
            let r = g.rope(x, &args).unwrap();
            assert_eq!(ty(&g, r), "f32[b, s, 4, 16]");
        }
        let rope = |g: &mut Graph, args: RopeArgs| g.rope(x, &args);
        let bad_pos = g.input("bad_pos", syms(&["b", "t"]), DType::I64).unwrap();
        shape_err(
            rope(
                &mut g,
                RopeArgs {
                    positions: Some(bad_pos),
                    ..Default::default()
                },
            ),
            &["rope", "[b, t]", "[b, s, 4, 16]"],
        );
        let float_pos = g.input("float_pos", syms(&["s"]), DType::F32).unwrap();
        dtype_err(
            rope(
                &mut g,
                RopeArgs {
                    positions: Some(float_pos),
                    ..Default::default()
                },
            ),
            "rope",
        );
        shape_err(
            rope(
                &mut g,
                RopeArgs {
                    rotary_dim: Some(7),
                    ..Default::default()
                },
            ),
            &["rope", "rotary_dim 7"],
        );
        shape_err(
            rope(
                &mut g,
                RopeArgs {
                    rotary_dim: Some(18),
                    ..Default::default()
                },
            ),
            &["rope", "head_dim 16"],
        );
        shape_err(
            rope(
                &mut g,
                RopeArgs {
                    inv_freq: Some(freq),
                    ..Default::default()
                },
            ),
            &["rope", "inv_freq", "[8]", "[4]"],
        );
        shape_err(
            rope(
                &mut g,
                RopeArgs {
                    theta: 0.0,
                    ..Default::default()
                },
            ),
            &["rope", "theta"],
        );
        let sym_dim = g
            .input("sym_dim", syms(&["b", "s", "4", "d"]), DType::F32)
            .unwrap();
        shape_err(
            g.rope(sym_dim, &RopeArgs::default()),
            &["rope", "[b, s, 4, d]"],
        );

        let q = g
            .input("q", syms(&["b", "s", "4", "16"]), DType::F32)
            .unwrap();
        let kv = g
            .input("kv", syms(&["b", "t", "2", "16"]), DType::F32)
            .unwrap();
        let mask = g.input("mask", syms(&["b", "t"]), DType::Bool).unwrap();
        let a = g
            .attention(q, kv, kv, false, None, Some(mask), None)
            .unwrap();
        assert_eq!(ty(&g, a), "f32[b, s, 4, 16]");
        assert_eq!(g.nodes()[a].inputs.len(), 4);
        let int_mask = g.input("int_mask", syms(&["b", "t"]), DType::I64).unwrap();
        assert!(g
            .attention(q, kv, kv, true, None, Some(int_mask), None)
            .is_ok());
        shape_err(
            g.attention(q, kv, kv, false, None, Some(pos), None),
            &["attention", "key_padding_mask", "[b, t]", "[b, s]"],
        );
        let float_mask = g
            .input("float_mask", syms(&["b", "t"]), DType::F32)
            .unwrap();
        dtype_err(
            g.attention(q, kv, kv, false, None, Some(float_mask), None),
            "attention",
        );
    }
}
