//! Fusing attention written op by op into the fused attention kernel, which
//! never materializes the [seq_q, seq_k] score matrix.
//!
//! The pattern, over Q [batch, seq_q, heads, head_dim], K [batch, seq_k,
//! heads_kv, head_dim] and V [batch, seq_k, heads_kv, head_dim_v]:
//!
//! ```text
//! scores = matmul(transpose(Q, [0,2,1,3]), transpose(K, [0,2,3,1]))
//! scores = scores * c  |  c * scores  |  scores / c      (optional; c a 1-element f32 constant)
//! scores = <causal mask>                                  (optional, see below)
//! probs  = softmax(scores, axis=-1)
//! out    = matmul(probs, transpose(V, [0,2,1,3]))        [batch, heads, seq_q, head_dim_v]
//! ```
//!
//! Each transpose may also be a chain of transposes with that composed
//! permutation (HF's `permute(0, 2, 1, 3)` then `.transpose(-1, -2)` for K).
//! heads_kv must equal heads or be 1 (the matmul broadcasts one K/V head).
//! The result is `attention(Q, K, V)` [batch, seq_q, heads, head_dim_v]: it
//! replaces the `transpose(out, [0,2,1,3])` that usually follows, or `out`
//! itself through a new transpose back to [batch, heads, seq_q, head_dim_v].
//!
//! The masks recognized, between the scaling and the softmax, are a causal
//! mask, a key padding mask, or both (one over the other, either order).
//!
//! The causal masks recognized, on known seq_q <= seq_k, are constants that
//! allow query i to see key j exactly when j <= i + (seq_k - seq_q) (the
//! kernel's bottom-right aligned causal mask), [seq_q, seq_k] with optional
//! leading 1s, in one of the forms
//! - `scores + mask`, mask 0 where allowed and -inf or <= -1e9 elsewhere;
//! - `masked_fill(scores, mask, value)`, mask true where forbidden, value -inf or <= -1e9;
//! - `where(mask, scores, value)` (mask true where allowed) or
//!   `where(mask, value, scores)` (mask true where forbidden), value a 1-element constant.
//!
//! A forbidden score of at most -1e9 gets a softmax weight of exactly 0 like
//! the kernel's skipped key, for any score of realistic size.
//!
//! The key padding mask recognized is Hugging Face BERT's extended attention
//! mask, `scores + bias` (either operand order) with
//!
//! ```text
//! bias = (1 - cast(m, f32)) * c        reshaped to [batch, 1, 1, seq_k]
//! ```
//!
//! where m [batch, seq_k] is a bool or integer value (1 = attend, 0 = pad,
//! like HF's `attention_mask`): the fused node reads m as its key padding
//! mask. The steps from m to the bias may come in any order and form: reshapes
//! anywhere (HF's `m[:, None, None, :]` before the cast, or a reshape of the
//! cast), casts between integer and bool types before the cast to f32, and
//! after it any chain of `neg` and `+ - * /` with 1-element f32 constants
//! (`(1 - x) * c`, `(x - 1) * big`, `x * big - big`, ...). The bias must be
//! [batch, 1, 1, seq_k] of the scores' batch and seq_k (broadcast over heads
//! and queries only), and evaluated in f32 at m = 1 and m = 0 it must be
//! exactly 0 and at most [`PADDING_MASKED_AT_MOST`] (-1e4: old BERT's
//! -10000, -1e9 and `finfo(f32).min` qualify; c = -inf does not, since
//! (1 - 1) * -inf is NaN, which the unfused graph adds to attended scores).
//! A padded key's score then sits at least 1e4 below the row's attended
//! scores, and its exp underflows to exactly 0 in f32 (below e^-104) unless
//! the attended scores spread over more than ~9900, so every row with at
//! least one attended key matches the kernel to f32 precision. Two cases
//! differ, both meaningless in practice:
//! - a row whose keys are ALL padded: the unfused softmax spreads the weight
//!   over the padded keys (uniformly once c swamps the scores), the kernel
//!   outputs zeros for that row;
//! - mask values other than 0 and 1: the kernel attends every nonzero key, the
//!   unfused graph adds `(1 - m) * c` (a bonus for m > 1).
//!
//! A mask with no cast from bool or integer (an f32 mask of 0s and 1s) stays
//! unfused: the kernel needs a bool or integer mask and the pass adds no
//! cast. So do masks of other shapes ([batch, 1, seq_q, seq_k], per head)
//! and other values.
//!
//! Everything else stays unfused: other mask values and additive biases,
//! masks computed from floats at run time, scaling applied to Q or K,
//! log_softmax, softmax over another axis, and any intermediate (scores,
//! probs) that something else also reads. The nodes that build a padding
//! mask's bias are left for DCE (they stay when something else reads them).

use std::collections::HashMap;

use crate::dtype::DType;
use crate::error::Result;
use crate::graph::{Dim, Graph, Op, TensorType, ValueId};
use crate::kernels::generic::elementwise::{Binary, Unary};
use crate::tensor::Tensor;

use super::{constant_of, live, live_readers, only_read_by, output_mask, PassOutput, Rebuild};

/// A forbidden position's mask value must be at most this (or -inf).
pub const MASKED_AT_MOST: f32 = -1e9;

/// A padded key's bias (the key padding mask pattern at m = 0) must be at
/// most this (or -inf).
pub const PADDING_MASKED_AT_MOST: f32 = -1e4;

const TO_HEADS_FIRST: [usize; 4] = [0, 2, 1, 3];
const K_TRANSPOSED: [usize; 4] = [0, 2, 3, 1];

/// One matched pattern: the fused node's inputs and attributes.
struct Fusion {
    q: ValueId,
    k: ValueId,
    v: ValueId,
    causal: bool,
    /// The bool or integer [batch, seq_k] mask (nonzero = attend), if any.
    key_padding_mask: Option<ValueId>,
    scale: f32,
    /// [batch, seq_q, heads, head_dim_v]
    out: TensorType,
    /// Whether the node replaced is `out` itself (then a transpose restores its layout).
    transpose_back: bool,
}

/// Fuses attention patterns; `rewrites` counts them.
pub fn run(graph: &Graph) -> Result<PassOutput> {
    let live = live(graph);
    let m = Matcher {
        graph,
        readers: live_readers(graph),
        is_output: output_mask(graph),
    };
    let mut fusions: HashMap<ValueId, Fusion> = HashMap::new();
    for id in (0..graph.nodes().len()).filter(|&id| live[id]) {
        if let Some((at, fusion)) = m.match_at(id) {
            fusions.insert(at, fusion);
        }
    }
    let rewrites = fusions.len();
    let mut rebuild = Rebuild::new(graph);
    for (id, node) in graph.nodes().iter().enumerate() {
        let Some(f) = fusions.remove(&id) else {
            rebuild.copy(id);
            continue;
        };
        let op = Op::Attention {
            causal: f.causal,
            scale: Some(f.scale),
            has_key_padding_mask: f.key_padding_mask.is_some(),
            has_segments: false,
            has_append: false,
        };
        let mut inputs = vec![rebuild.value(f.q), rebuild.value(f.k), rebuild.value(f.v)];
        inputs.extend(f.key_padding_mask.map(|m| rebuild.value(m)));
        let mut fused = rebuild.push(op, inputs, f.out);
        if f.transpose_back {
            let perm = TO_HEADS_FIRST.to_vec();
            fused = rebuild.push(Op::Transpose { perm }, vec![fused], node.out.clone());
        }
        rebuild.replace(id, fused);
    }
    Ok(PassOutput {
        graph: rebuild.finish(),
        rewrites,
    })
}

struct Matcher<'g> {
    graph: &'g Graph,
    readers: Vec<Vec<ValueId>>,
    is_output: Vec<bool>,
}

impl Matcher<'_> {
    fn op(&self, v: ValueId) -> &Op {
        &self.graph.nodes()[v].op
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        &self.graph.nodes()[v].out
    }

    /// `v` feeds `reader` alone and is no output: the fused node may swallow it.
    fn only_feeds(&self, v: ValueId, reader: ValueId) -> bool {
        only_read_by(v, &self.readers, &self.is_output) == Some(reader)
    }

    /// The pattern ending at the matmul `id`: the node to replace and the fusion.
    fn match_at(&self, id: ValueId) -> Option<(ValueId, Fusion)> {
        let nodes = self.graph.nodes();
        let (probs, v_heads) = match (self.op(id), nodes[id].inputs.as_slice()) {
            (Op::MatMul, &[p, v]) => (p, v),
            _ => return None,
        };
        let Op::Softmax { axis, log: false } = *self.op(probs) else {
            return None;
        };
        if !(axis == -1 || axis == 3) || !self.only_feeds(probs, id) {
            return None;
        }
        let masked = nodes[probs].inputs[0];
        if !self.only_feeds(masked, probs) {
            return None;
        }
        let (scaled, causal, key_padding_mask) = self.strip_masks(masked);
        let (raw, scale) = self.strip_scale(scaled)?;
        let (q_heads, k_heads) = match (self.op(raw), nodes[raw].inputs.as_slice()) {
            (Op::MatMul, &[q, k]) => (q, k),
            _ => return None,
        };
        let q = self.through_transposes(q_heads, &TO_HEADS_FIRST)?;
        let k = self.through_transposes(k_heads, &K_TRANSPOSED)?;
        let v = self.through_transposes(v_heads, &TO_HEADS_FIRST)?;
        let out = self.attention_type(q, k, v)?;
        // The matmul's [batch, heads, seq_q, dv] must be the kernel's output transposed.
        let heads_first: Vec<Dim> = TO_HEADS_FIRST
            .iter()
            .map(|&p| out.dims[p].clone())
            .collect();
        if nodes[id].out != TensorType::new(DType::F32, heads_first) {
            return None;
        }
        // The kernel's mask is [batch, seq_k] of q's batch and k's seq.
        if let Some(m) = key_padding_mask {
            let want = [out.dims[0].clone(), self.ty(k).dims[1].clone()];
            if self.ty(m).dims != want {
                return None;
            }
        }
        let fusion = |transpose_back| Fusion {
            q,
            k,
            v,
            causal,
            key_padding_mask,
            scale,
            out: out.clone(),
            transpose_back,
        };
        if let Some(t) = only_read_by(id, &self.readers, &self.is_output) {
            if matches!(self.op(t), Op::Transpose { perm } if perm == &TO_HEADS_FIRST) {
                return Some((t, fusion(false)));
            }
        }
        Some((id, fusion(true)))
    }

    /// The scores under the masks on `v`, whether one was causal, and the
    /// key padding mask's source if there was one: at most one of each, in
    /// either order. With no mask recognized, `v` itself (maybe under some
    /// other mask, which the scale and matmul steps then fail to match).
    fn strip_masks(&self, v: ValueId) -> (ValueId, bool, Option<ValueId>) {
        let (mut at, mut causal, mut padding) = (v, false, None);
        loop {
            if !causal {
                if let Some(scores) = self.strip_causal_mask(at) {
                    (at, causal) = (scores, true);
                    continue;
                }
            }
            if padding.is_none() {
                if let Some((scores, m)) = self.strip_padding_mask(at) {
                    (at, padding) = (scores, Some(m));
                    continue;
                }
            }
            return (at, causal, padding);
        }
    }

    /// The scores under a causal mask `v`, if `v` is one.
    fn strip_causal_mask(&self, v: ValueId) -> Option<ValueId> {
        let node = &self.graph.nodes()[v];
        // The mask's output must be the scores' type: no broadcasting growth.
        let under = |scores: ValueId| {
            (self.only_feeds(scores, v) && *self.ty(scores) == node.out).then_some(scores)
        };
        let zero = |x: f32| x == 0.0;
        let one = |x: f32| x == 1.0;
        match (&node.op, node.inputs.as_slice()) {
            (Op::Binary(Binary::Add), &[a, b]) => [(a, b), (b, a)]
                .into_iter()
                .find(|&(s, m)| self.is_causal(s, m, zero, is_masked_value))
                .and_then(|(s, _)| under(s)),
            (Op::MaskedFill { value }, &[s, m])
                if is_masked_value(*value as f32) && self.is_causal(s, m, zero, one) =>
            {
                under(s)
            }
            (Op::Where, &[cond, a, b]) if self.is_fill(b) && self.is_causal(a, cond, one, zero) => {
                under(a)
            }
            (Op::Where, &[cond, a, b]) if self.is_fill(a) && self.is_causal(b, cond, zero, one) => {
                under(b)
            }
            _ => None,
        }
    }

    /// The scores under a key padding mask `v` (`scores + bias`, either
    /// order) and the mask's bool or integer source m [batch, seq_k].
    fn strip_padding_mask(&self, v: ValueId) -> Option<(ValueId, ValueId)> {
        let node = &self.graph.nodes()[v];
        let (Op::Binary(Binary::Add), &[a, b]) = (&node.op, node.inputs.as_slice()) else {
            return None;
        };
        [(a, b), (b, a)].into_iter().find_map(|(scores, bias)| {
            // No broadcasting growth: the sum has the scores' type.
            if !self.only_feeds(scores, v) || *self.ty(scores) != node.out {
                return None;
            }
            Some((scores, self.padding_mask_source(bias, &node.out)?))
        })
    }

    /// The bool or integer m that `bias` is the additive padding mask of (see
    /// the module doc), for scores of type `scores` [batch, heads, seq_q, seq_k].
    fn padding_mask_source(&self, bias: ValueId, scores: &TensorType) -> Option<ValueId> {
        if scores.ndim() != 4 || scores.dtype != DType::F32 {
            return None;
        }
        let (batch, seq_k) = (&scores.dims[0], &scores.dims[3]);
        let tb = self.ty(bias);
        let bias_dims = [batch.clone(), Dim::Known(1), Dim::Known(1), seq_k.clone()];
        if tb.dtype != DType::F32 || tb.dims != bias_dims {
            return None;
        }
        // Up from the bias through the f32 steps to the cast from bool or
        // integer; the steps as met (last applied first).
        let mut steps: Vec<Step> = Vec::new();
        let mut at = bias;
        loop {
            let node = &self.graph.nodes()[at];
            let step = match (&node.op, node.inputs.as_slice()) {
                (Op::Reshape { .. }, &[x]) => {
                    at = x;
                    continue;
                }
                (Op::Cast { dtype: DType::F32 }, &[x]) if !self.ty(x).dtype.is_float() => {
                    at = x;
                    break;
                }
                (Op::Unary(Unary::Neg), &[x]) => (x, Step::Neg),
                (Op::Binary(op), &[a, b]) => {
                    let (x, step) = match (scalar(self.graph, a), scalar(self.graph, b)) {
                        (_, Some(c)) => (a, Step::Right(*op, c)),
                        (Some(c), _) => (b, Step::Left(c, *op)),
                        _ => return None,
                    };
                    // Elementwise over x: a constant that grew the shape would
                    // broadcast the mask over something else.
                    if self.ty(x).dims != node.out.dims {
                        return None;
                    }
                    (x, step)
                }
                _ => return None,
            };
            steps.push(step.1);
            at = step.0;
        }
        // The bool or integer side: reshapes and casts that keep 0 and 1.
        loop {
            let node = &self.graph.nodes()[at];
            match (&node.op, node.inputs.as_slice()) {
                (Op::Reshape { .. }, &[x]) => at = x,
                (Op::Cast { .. }, &[x]) if !self.ty(x).dtype.is_float() => at = x,
                _ => break,
            }
        }
        // Reshapes keep the row-major order, so [batch, seq_k] to
        // [batch, 1, 1, seq_k] puts m[b, j] at bias[b, 0, 0, j].
        if self.ty(at).dims != [batch.clone(), seq_k.clone()] {
            return None;
        }
        let bias_of = |m: f32| steps.iter().rev().try_fold(m, |x, s| s.apply(x));
        let attended = bias_of(1.0)? == 0.0;
        let padded = bias_of(0.0)? <= PADDING_MASKED_AT_MOST;
        (attended && padded).then_some(at)
    }

    /// Whether constant `mask` is the kernel's causal mask for `scores`
    /// [.., seq_q, seq_k]: `allowed` holds at every visible position and
    /// `forbidden` at every other.
    fn is_causal(
        &self,
        scores: ValueId,
        mask: ValueId,
        allowed: impl Fn(f32) -> bool,
        forbidden: impl Fn(f32) -> bool,
    ) -> bool {
        let (Some(m), st) = (constant_of(self.graph, mask), self.ty(scores)) else {
            return false;
        };
        if st.ndim() != 4 {
            return false;
        }
        let (&Dim::Known(sq), &Dim::Known(sk)) = (&st.dims[2], &st.dims[3]) else {
            return false;
        };
        let shape = m.shape();
        let leading_ones = shape.len() >= 2 && shape[..shape.len() - 2].iter().all(|&d| d == 1);
        if !leading_ones || shape.len() > 4 || shape[shape.len() - 2..] != [sq, sk] || sk < sq {
            return false;
        }
        let Ok(values) = m.cast(DType::F32).and_then(|t| t.elements::<f32>()) else {
            return false;
        };
        values.chunks(sk.max(1)).enumerate().all(|(i, row)| {
            row.iter().enumerate().all(|(j, &x)| {
                if j <= i + (sk - sq) {
                    allowed(x)
                } else {
                    forbidden(x)
                }
            })
        })
    }

    /// A 1-element f32 constant at most [`MASKED_AT_MOST`].
    fn is_fill(&self, v: ValueId) -> bool {
        scalar(self.graph, v).is_some_and(is_masked_value)
    }

    /// The scores before a multiplication by a constant, and that constant
    /// (1 when there is none).
    fn strip_scale(&self, v: ValueId) -> Option<(ValueId, f32)> {
        let node = &self.graph.nodes()[v];
        let found = match (&node.op, node.inputs.as_slice()) {
            (Op::Binary(Binary::Mul), &[a, b]) => {
                match (scalar(self.graph, a), scalar(self.graph, b)) {
                    (_, Some(c)) => Some((a, c)),
                    (Some(c), _) => Some((b, c)),
                    _ => None,
                }
            }
            (Op::Binary(Binary::Div), &[a, b]) => scalar(self.graph, b).map(|c| (a, 1.0 / c)),
            _ => None,
        };
        match found {
            Some((scores, c)) => {
                let fits = self.only_feeds(scores, v) && *self.ty(scores) == node.out;
                (fits && c.is_finite()).then_some((scores, c))
            }
            None => Some((v, 1.0)),
        }
    }

    /// The value that `v` is `transpose(_, want)` of, through one or more
    /// transposes: the farthest one up the chain, so that no transpose of
    /// the chain has to run for the fused node.
    fn through_transposes(&self, v: ValueId, want: &[usize]) -> Option<ValueId> {
        let mut at = v;
        let mut composed: Vec<usize> = (0..self.ty(v).ndim()).collect();
        let mut found = None;
        loop {
            if composed == want {
                found = Some(at);
            }
            let Op::Transpose { perm } = self.op(at) else {
                return found;
            };
            // transpose(transpose(x, p1), p2) = transpose(x, [p1[p2[i]]]).
            composed = composed.iter().map(|&i| perm[i]).collect();
            at = self.graph.nodes()[at].inputs[0];
        }
    }

    /// The fused node's type, when the kernel can take q, k, v as they are.
    fn attention_type(&self, q: ValueId, k: ValueId, v: ValueId) -> Option<TensorType> {
        let (tq, tk, tv) = (self.ty(q), self.ty(k), self.ty(v));
        let gemm = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
        if [tq, tk, tv].iter().any(|t| t.ndim() != 4 || !gemm(t.dtype)) {
            return None;
        }
        let (qd, kd, vd) = (&tq.dims, &tk.dims, &tv.dims);
        let fits = kd[0] == qd[0]
            && vd[0] == qd[0]
            && vd[1] == kd[1]
            && vd[2] == kd[2]
            && kd[3] == qd[3]
            && (kd[2] == qd[2] || kd[2].is_one());
        fits.then(|| {
            let dims = vec![qd[0].clone(), qd[1].clone(), qd[2].clone(), vd[3].clone()];
            TensorType::new(DType::F32, dims)
        })
    }
}

/// One f32 step of a padding mask's bias: `op(x, c)`, `op(c, x)` or `-x`.
#[derive(Clone, Copy)]
enum Step {
    Right(Binary, f32),
    Left(f32, Binary),
    Neg,
}

impl Step {
    /// The step on x in f32, as the kernels compute it; None for ops the
    /// pattern does not take.
    fn apply(self, x: f32) -> Option<f32> {
        let bin = |op: Binary, a: f32, b: f32| match op {
            Binary::Add => Some(a + b),
            Binary::Sub => Some(a - b),
            Binary::Mul => Some(a * b),
            Binary::Div => Some(a / b),
            _ => None,
        };
        match self {
            Step::Right(op, c) => bin(op, x, c),
            Step::Left(c, op) => bin(op, c, x),
            Step::Neg => Some(-x),
        }
    }
}

fn is_masked_value(x: f32) -> bool {
    x <= MASKED_AT_MOST
}

/// The value of a 1-element f32 constant.
fn scalar(graph: &Graph, v: ValueId) -> Option<f32> {
    let t: &Tensor = constant_of(graph, v)?;
    if t.numel() != 1 || t.dtype() != DType::F32 {
        return None;
    }
    t.elements::<f32>().ok()?.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::uniform;
    use crate::passes::dce;
    use crate::passes::testing::{assert_same_values, assert_same_values_with, count};

    fn fused(g: &Graph) -> (Graph, usize) {
        let out = run(g).unwrap();
        let after = dce::run(&out.graph).unwrap().graph;
        crate::graph::verify::verify(&after).unwrap();
        (after, out.rewrites)
    }

    fn scalar_const(g: &mut Graph, x: f32) -> ValueId {
        g.constant(Tensor::from_slice(&[x], &[1]).unwrap())
    }

    /// The causal mask for seq_q x seq_k in `allowed`/`forbidden` values.
    fn causal_mask(sq: usize, sk: usize, allowed: f32, forbidden: f32) -> Tensor {
        let data: Vec<f32> = (0..sq * sk)
            .map(|n| {
                if n % sk <= n / sk + (sk - sq) {
                    allowed
                } else {
                    forbidden
                }
            })
            .collect();
        Tensor::from_slice(&data, &[sq, sk]).unwrap()
    }

    /// Inputs q, k, v [batch, seq, heads, head_dim] and the pattern up to the
    /// scaled scores; returns (scores, v with heads first).
    fn scores(g: &mut Graph, seq_q: Dim, seq_k: Dim, heads_kv: usize) -> (ValueId, ValueId) {
        let dims =
            |s: &Dim, h: usize| vec![Dim::sym("batch"), s.clone(), Dim::Known(h), Dim::Known(8)];
        let q = g.input("q", dims(&seq_q, 4), DType::F32).unwrap();
        let k = g.input("k", dims(&seq_k, heads_kv), DType::F32).unwrap();
        let v = g.input("v", dims(&seq_k, heads_kv), DType::F32).unwrap();
        let qt = g.transpose(q, &[0, 2, 1, 3]).unwrap();
        // K as HF writes it: heads first, then the last two dims swapped.
        let kh = g.transpose(k, &[0, 2, 1, 3]).unwrap();
        let kt = g.transpose(kh, &[0, 1, 3, 2]).unwrap();
        let vt = g.transpose(v, &[0, 2, 1, 3]).unwrap();
        let s = g.matmul(qt, kt).unwrap();
        let c = scalar_const(g, 8f32.sqrt());
        (g.div(s, c).unwrap(), vt)
    }

    /// The second matmul, back to [batch, seq, heads * head_dim].
    fn finish(g: &mut Graph, probs: ValueId, vt: ValueId) -> ValueId {
        let o = g.matmul(probs, vt).unwrap();
        let ot = g.transpose(o, &[0, 2, 1, 3]).unwrap();
        let seq = g.value_type(ot).unwrap().dims[1].clone();
        g.reshape(
            ot,
            &[Some(Dim::sym("batch")), Some(seq), Some(Dim::Known(32))],
        )
        .unwrap()
    }

    fn attention_ops(g: &Graph) -> Vec<Op> {
        let live = crate::passes::live(g);
        g.nodes()
            .iter()
            .zip(live)
            .filter(|(n, l)| *l && matches!(n.op, Op::Attention { .. }))
            .map(|(n, _)| n.op.clone())
            .collect()
    }

    #[test]
    fn fuses_unmasked_attention_with_symbolic_seq() {
        let mut g = Graph::new();
        let (s, vt) = scores(&mut g, Dim::sym("seq"), Dim::sym("seq"), 4);
        let p = g.softmax(s, -1).unwrap();
        let y = finish(&mut g, p, vt);
        g.output("y", y).unwrap();
        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 1);
        assert_eq!(count(&after, "matmul") + count(&after, "softmax"), 0);
        assert_eq!(count(&after, "transpose"), 0);
        assert_eq!(after.nodes().len(), 5, "q, k, v, attention, reshape");
        let ops = attention_ops(&after);
        let Op::Attention {
            causal: false,
            scale: Some(scale),
            has_key_padding_mask: false,
            ..
        } = ops[0]
        else {
            panic!("{ops:?}");
        };
        assert!((scale - 1.0 / 8f32.sqrt()).abs() < 1e-7);
        assert_same_values(&g, &after, &[("batch", 2), ("seq", 5)], 1e-5);
    }

    #[test]
    fn fuses_stacked_layers_reading_the_first_layers_output() {
        let mut g = Graph::new();
        let (s, vt) = scores(&mut g, Dim::sym("seq"), Dim::sym("seq"), 4);
        let p = g.softmax(s, -1).unwrap();
        let o = g.matmul(p, vt).unwrap();
        let first = g.transpose(o, &[0, 2, 1, 3]).unwrap(); // [batch, seq, heads, dim]
                                                            // The second layer attends over the first one's output (q = k = v).
        let q = g.transpose(first, &[0, 2, 1, 3]).unwrap();
        let k = g.transpose(first, &[0, 2, 3, 1]).unwrap();
        let s2 = g.matmul(q, k).unwrap();
        let p2 = g.softmax(s2, -1).unwrap();
        let o2 = g.matmul(p2, q).unwrap();
        let second = g.transpose(o2, &[0, 2, 1, 3]).unwrap();
        g.output("y", second).unwrap();
        let (after, rewrites) = fused(&g);
        assert_eq!(rewrites, 2);
        assert_eq!(after.nodes().len(), 5, "q, k, v and two attentions");
        let ops = attention_ops(&after);
        assert!(matches!(ops[1], Op::Attention { scale: Some(s), .. } if s == 1.0));
        assert_same_values(&g, &after, &[("batch", 2), ("seq", 3)], 1e-5);
    }

    #[test]
    fn fuses_causal_masks_in_each_form() {
        // (seq_q, seq_k) = (5, 5) and (3, 5): a query block after a cached past.
        for (sq, sk) in [(5usize, 5usize), (3, 5)] {
            for form in [
                "add-inf",
                "add-min",
                "masked_fill",
                "where",
                "where-swapped",
            ] {
                let mut g = Graph::new();
                let (s, vt) = scores(&mut g, Dim::Known(sq), Dim::Known(sk), 1);
                let masked = match form {
                    "add-inf" | "add-min" => {
                        let fill = if form == "add-inf" {
                            f32::NEG_INFINITY
                        } else {
                            f32::MIN
                        };
                        let m = causal_mask(sq, sk, 0.0, fill)
                            .reshape(&[1, 1, sq as isize, sk as isize])
                            .unwrap();
                        let m = g.constant(m);
                        g.add(m, s).unwrap()
                    }
                    "masked_fill" => {
                        let m =
                            g.constant(causal_mask(sq, sk, 0.0, 1.0).cast(DType::Bool).unwrap());
                        g.masked_fill(s, m, f64::NEG_INFINITY).unwrap()
                    }
                    _ => {
                        let fill = scalar_const(&mut g, -1e9);
                        if form == "where" {
                            let m = g
                                .constant(causal_mask(sq, sk, 1.0, 0.0).cast(DType::Bool).unwrap());
                            g.where_(m, s, fill).unwrap()
                        } else {
                            let m = g
                                .constant(causal_mask(sq, sk, 0.0, 1.0).cast(DType::Bool).unwrap());
                            g.where_(m, fill, s).unwrap()
                        }
                    }
                };
                // No trailing transpose: the pass adds one.
                let p = g.softmax(masked, 3).unwrap();
                let o = g.matmul(p, vt).unwrap();
                g.output("o", o).unwrap();
                let (after, rewrites) = fused(&g);
                assert_eq!(rewrites, 1, "{form} {sq}x{sk}");
                let ops = attention_ops(&after);
                assert!(
                    matches!(ops[0], Op::Attention { causal: true, .. }),
                    "{form}: {ops:?}"
                );
                assert_eq!(count(&after, "transpose"), 1);
                assert_eq!(count(&after, "softmax"), 0);
                assert_same_values(&g, &after, &[("batch", 2)], 1e-5);
            }
        }
    }

    #[test]
    fn leaves_what_the_kernel_cannot_express() {
        let build = |case: &str| {
            let mut g = Graph::new();
            let (s, vt) = scores(&mut g, Dim::Known(4), Dim::Known(4), 4);
            let masked = match case {
                // Not causal: an arbitrary additive bias (ALiBi-like).
                "bias" => {
                    let b = g
                        .constant(Tensor::from_slice(&uniform(16, 3, -1.0, 1.0), &[4, 4]).unwrap());
                    g.add(s, b).unwrap()
                }
                // Causal, but a mask value too small to zero the weight exactly.
                "weak" => {
                    let m = g.constant(causal_mask(4, 4, 0.0, -100.0));
                    g.add(s, m).unwrap()
                }
                // The upper triangle allowed: anti-causal.
                "anti" => {
                    let m = g.constant(causal_mask(4, 4, f32::NEG_INFINITY, 0.0));
                    g.add(s, m).unwrap()
                }
                // A padding mask from an input.
                "padding" => {
                    let m = g
                        .input(
                            "mask",
                            vec![
                                Dim::sym("batch"),
                                Dim::Known(1),
                                Dim::Known(1),
                                Dim::Known(4),
                            ],
                            DType::F32,
                        )
                        .unwrap();
                    g.add(s, m).unwrap()
                }
                _ => s,
            };
            let p = if case == "log" {
                g.log_softmax(masked, -1).unwrap()
            } else {
                g.softmax(masked, -1).unwrap()
            };
            let y = finish(&mut g, p, vt);
            g.output("y", y).unwrap();
            if case == "probs-read" {
                g.output("probs", p).unwrap();
            }
            g
        };
        for case in ["bias", "weak", "anti", "padding", "log", "probs-read"] {
            let g = build(case);
            let (after, rewrites) = fused(&g);
            assert_eq!(rewrites, 0, "{case}");
            assert_eq!(count(&after, "attention"), 0, "{case}");
            assert_eq!(after.nodes().len(), g.nodes().len(), "{case}");
        }
    }

    /// A 0-d f32 constant, as the Python builder makes of a float.
    fn scalar0(g: &mut Graph, x: f32) -> ValueId {
        g.constant(Tensor::from_slice(&[x], &[]).unwrap())
    }

    /// A HF-style attention_mask [batch, seq] of `dtype`: 1 = attend. Row 0
    /// attends everything, row 1 pads the last two keys, row 2 two in the
    /// middle, row 3 the first two. Rows 0 to 2 attend key 0, so that a
    /// causal query 0 keeps a key there; row 3 does not (the causal test
    /// leaves it out: the kernel gives zeros where every key is masked).
    fn padding_mask(batch: usize, seq: usize, dtype: DType) -> Tensor {
        let data: Vec<f32> = (0..batch * seq)
            .map(|n| {
                let (b, j) = (n / seq, n % seq);
                let padded = match b % 4 {
                    0 => false,
                    1 => j + 2 >= seq,
                    2 => j == 1 || j == 2,
                    _ => j < 2,
                };
                if padded {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        Tensor::from_slice(&data, &[batch, seq])
            .unwrap()
            .cast(dtype)
            .unwrap()
    }

    fn to_bias_shape(g: &mut Graph, x: ValueId, seq: &Dim) -> ValueId {
        let shape = [
            Some(Dim::sym("batch")),
            Some(Dim::Known(1)),
            Some(Dim::Known(1)),
            Some(seq.clone()),
        ];
        g.reshape(x, &shape).unwrap()
    }

    /// The forms of the HF padding-mask bias recognized, over the mask input
    /// m [batch, seq]: the name, the mask's dtype, and whether the bias is
    /// added as `bias + scores` (else `scores + bias`).
    const PADDING_FORMS: [(&str, DType, bool); 7] = [
        ("graph_models", DType::I64, false),
        ("hf_unsqueeze_first_finfo_min", DType::I64, false),
        ("old_bert_const_left", DType::I64, true),
        ("minus_one_times_big", DType::I32, false),
        ("bool_source", DType::Bool, true),
        ("through_bool_cast", DType::I64, false),
        ("neg_then_add", DType::U8, false),
    ];

    /// The bias of `form` from the mask m [batch, seq].
    fn padding_bias(g: &mut Graph, m: ValueId, seq: &Dim, form: &str) -> ValueId {
        match form {
            // tests/graph_models.py: reshape of the cast, then (1 - x) * -1e9.
            "graph_models" | "bool_source" => {
                let f = g.cast(m, DType::F32).unwrap();
                let keep = to_bias_shape(g, f, seq);
                let one = scalar0(g, 1.0);
                let inv = g.sub(one, keep).unwrap();
                let c = scalar0(g, -1e9);
                g.mul(inv, c).unwrap()
            }
            // HF: m[:, None, None, :].to(f32), then (1 - x) * finfo(f32).min.
            "hf_unsqueeze_first_finfo_min" => {
                let m4 = to_bias_shape(g, m, seq);
                let f = g.cast(m4, DType::F32).unwrap();
                let one = scalar_const(g, 1.0);
                let inv = g.sub(one, f).unwrap();
                let c = scalar_const(g, f32::MIN);
                g.mul(inv, c).unwrap()
            }
            // Old BERT: -10000 * (1 - x), reshaped last.
            "old_bert_const_left" => {
                let f = g.cast(m, DType::F32).unwrap();
                let one = scalar0(g, 1.0);
                let inv = g.sub(one, f).unwrap();
                let c = scalar0(g, -10000.0);
                let b = g.mul(c, inv).unwrap();
                to_bias_shape(g, b, seq)
            }
            // (x - 1) * 1e4.
            "minus_one_times_big" => {
                let f = g.cast(m, DType::F32).unwrap();
                let keep = to_bias_shape(g, f, seq);
                let one = scalar0(g, 1.0);
                let d = g.sub(keep, one).unwrap();
                let c = scalar0(g, 1e4);
                g.mul(d, c).unwrap()
            }
            // i64 -> bool -> f32, then (1 - x) * -1e9 with the 1 on the left.
            "through_bool_cast" => {
                let b = g.cast(m, DType::Bool).unwrap();
                let m4 = to_bias_shape(g, b, seq);
                let f = g.cast(m4, DType::F32).unwrap();
                let one = scalar0(g, 1.0);
                let inv = g.sub(one, f).unwrap();
                let c = scalar0(g, -1e9);
                g.mul(inv, c).unwrap()
            }
            // (-x + 1) * -1e5 written as neg, add, mul.
            "neg_then_add" => {
                let f = g.cast(m, DType::F32).unwrap();
                let n = g.unary(Unary::Neg, f).unwrap();
                let one = scalar0(g, 1.0);
                let inv = g.add(n, one).unwrap();
                let c = scalar0(g, -1e5);
                let b = g.mul(inv, c).unwrap();
                to_bias_shape(g, b, seq)
            }
            _ => panic!("{form}"),
        }
    }

    fn mask_input(g: &mut Graph, seq: &Dim, dtype: DType) -> ValueId {
        g.input("mask", vec![Dim::sym("batch"), seq.clone()], dtype)
            .unwrap()
    }

    /// The attention nodes that take a key padding mask, with their mask input.
    fn masked_attentions(g: &Graph) -> Vec<(Op, ValueId)> {
        let live = crate::passes::live(g);
        g.nodes()
            .iter()
            .zip(live)
            .filter(|(n, l)| {
                *l && matches!(
                    n.op,
                    Op::Attention {
                        has_key_padding_mask: true,
                        ..
                    }
                )
            })
            .map(|(n, _)| (n.op.clone(), n.inputs[3]))
            .collect()
    }

    fn is_input(g: &Graph, v: ValueId, name: &str) -> bool {
        matches!(&g.nodes()[v].op, Op::Input { name: n } if n == name)
    }

    #[test]
    fn fuses_hf_padding_masks_in_each_form() {
        let seq = Dim::sym("seq");
        for (form, dtype, bias_first) in PADDING_FORMS {
            let mut g = Graph::new();
            let (s, vt) = scores(&mut g, seq.clone(), seq.clone(), 4);
            let m = mask_input(&mut g, &seq, dtype);
            let bias = padding_bias(&mut g, m, &seq, form);
            let masked = if bias_first {
                g.add(bias, s).unwrap()
            } else {
                g.add(s, bias).unwrap()
            };
            let p = g.softmax(masked, -1).unwrap();
            let y = finish(&mut g, p, vt);
            g.output("y", y).unwrap();
            let (after, rewrites) = fused(&g);
            assert_eq!(rewrites, 1, "{form}");
            let att = masked_attentions(&after);
            assert_eq!(att.len(), 1, "{form}");
            assert!(
                matches!(att[0].0, Op::Attention { causal: false, scale: Some(c), .. }
                    if (c - 1.0 / 8f32.sqrt()).abs() < 1e-7),
                "{form}: {att:?}"
            );
            assert!(is_input(&after, att[0].1, "mask"), "{form}");
            // The bias-building nodes are dead and gone.
            for gone in ["cast", "sub", "mul", "add", "neg", "softmax", "matmul"] {
                assert_eq!(count(&after, gone), 0, "{form}: {gone}");
            }
            assert_eq!(
                after.nodes().len(),
                6,
                "{form}: q, k, v, mask, attention, reshape"
            );
            let mask = padding_mask(4, 5, dtype);
            let dims = [("batch", 4), ("seq", 5)];
            assert_same_values_with(&g, &after, &dims, 1e-5, &[("mask", mask)]);
        }
    }

    #[test]
    fn fuses_a_mask_shared_by_stacked_layers_and_keeps_it_when_read_elsewhere() {
        let seq = Dim::sym("seq");
        for bias_is_output in [false, true] {
            let mut g = Graph::new();
            let (s, vt) = scores(&mut g, seq.clone(), seq.clone(), 4);
            let m = mask_input(&mut g, &seq, DType::I64);
            // Built once, added in both layers, as tests/graph_models.py does.
            let bias = padding_bias(&mut g, m, &seq, "graph_models");
            let s = g.add(s, bias).unwrap();
            let p = g.softmax(s, -1).unwrap();
            let o = g.matmul(p, vt).unwrap();
            let first = g.transpose(o, &[0, 2, 1, 3]).unwrap();
            let q = g.transpose(first, &[0, 2, 1, 3]).unwrap();
            let k = g.transpose(first, &[0, 2, 3, 1]).unwrap();
            let s2 = g.matmul(q, k).unwrap();
            let s2 = g.add(bias, s2).unwrap();
            let p2 = g.softmax(s2, -1).unwrap();
            let o2 = g.matmul(p2, q).unwrap();
            let second = g.transpose(o2, &[0, 2, 1, 3]).unwrap();
            g.output("y", second).unwrap();
            if bias_is_output {
                g.output("bias", bias).unwrap();
            }
            let (after, rewrites) = fused(&g);
            assert_eq!(rewrites, 2, "bias output {bias_is_output}");
            let att = masked_attentions(&after);
            assert_eq!(att.len(), 2);
            assert!(att.iter().all(|&(_, m)| is_input(&after, m, "mask")));
            let kept = usize::from(bias_is_output);
            for op in ["cast", "reshape", "sub", "mul"] {
                assert_eq!(
                    count(&after, op),
                    kept,
                    "{op}, bias output {bias_is_output}"
                );
            }
            let mask = padding_mask(4, 3, DType::I64);
            let dims = [("batch", 4), ("seq", 3)];
            assert_same_values_with(&g, &after, &dims, 1e-5, &[("mask", mask)]);
        }
    }

    #[test]
    fn fuses_causal_and_padding_masks_together_in_either_order() {
        for (sq, sk) in [(5usize, 5usize), (3, 5)] {
            for causal_first in [true, false] {
                let seq_k = Dim::Known(sk);
                let mut g = Graph::new();
                let (s, vt) = scores(&mut g, Dim::Known(sq), seq_k.clone(), 1);
                let m = mask_input(&mut g, &seq_k, DType::I64);
                let bias = padding_bias(&mut g, m, &seq_k, "hf_unsqueeze_first_finfo_min");
                let causal = causal_mask(sq, sk, 0.0, f32::NEG_INFINITY);
                let causal = g.constant(causal);
                let masked = if causal_first {
                    let c = g.add(s, causal).unwrap();
                    g.add(c, bias).unwrap()
                } else {
                    let p = g.add(bias, s).unwrap();
                    g.add(causal, p).unwrap()
                };
                let p = g.softmax(masked, -1).unwrap();
                let y = finish(&mut g, p, vt);
                g.output("y", y).unwrap();
                let (after, rewrites) = fused(&g);
                let what = format!("{sq}x{sk} causal first {causal_first}");
                assert_eq!(rewrites, 1, "{what}");
                let att = masked_attentions(&after);
                assert!(
                    matches!(att[..], [(Op::Attention { causal: true, .. }, m)] if is_input(&after, m, "mask")),
                    "{what}: {att:?}"
                );
                assert_eq!(count(&after, "add") + count(&after, "cast"), 0, "{what}");
                let mask = padding_mask(3, sk, DType::I64);
                assert_same_values_with(&g, &after, &[("batch", 3)], 1e-5, &[("mask", mask)]);
            }
        }
    }

    #[test]
    fn leaves_padding_masks_the_kernel_cannot_take() {
        let seq = Dim::sym("seq");
        let build = |case: &str| {
            let mut g = Graph::new();
            let (s, vt) = scores(&mut g, seq.clone(), seq.clone(), 4);
            let bias = match case {
                // "weak": |c| < 1e4, a padded key may keep a tiny weight.
                "weak" | "inverted" | "nan" => {
                    let m = mask_input(&mut g, &seq, DType::I64);
                    let f = g.cast(m, DType::F32).unwrap();
                    let keep = to_bias_shape(&mut g, f, &seq);
                    let c = match case {
                        "weak" => -1000.0,
                        "inverted" => -1e9,
                        _ => f32::NEG_INFINITY,
                    };
                    let c = scalar0(&mut g, c);
                    if case == "inverted" {
                        // 1 = padded (a mask of the other convention): keep * -1e9.
                        g.mul(keep, c).unwrap()
                    } else {
                        // "nan": (1 - 1) * -inf is NaN at attended keys.
                        let one = scalar0(&mut g, 1.0);
                        let inv = g.sub(one, keep).unwrap();
                        g.mul(inv, c).unwrap()
                    }
                }
                // An f32 mask of 0s and 1s: the kernel needs bool or integer.
                "float_source" => {
                    let m = mask_input(&mut g, &seq, DType::F32);
                    let keep = to_bias_shape(&mut g, m, &seq);
                    let one = scalar0(&mut g, 1.0);
                    let inv = g.sub(one, keep).unwrap();
                    let c = scalar0(&mut g, -1e9);
                    g.mul(inv, c).unwrap()
                }
                // [batch, 1, seq_q, seq_k] and [batch, heads, 1, seq_k]: not
                // a key padding mask.
                "per_query" | "per_head" => {
                    let (dims, shape) = if case == "per_query" {
                        let d = vec![Dim::sym("batch"), seq.clone(), seq.clone()];
                        (d, [Dim::Known(1), seq.clone()])
                    } else {
                        let d = vec![Dim::sym("batch"), Dim::Known(4), seq.clone()];
                        (d, [Dim::Known(4), Dim::Known(1)])
                    };
                    let m = g.input("mask", dims, DType::I64).unwrap();
                    let f = g.cast(m, DType::F32).unwrap();
                    let four = [
                        Some(Dim::sym("batch")),
                        Some(shape[0].clone()),
                        Some(shape[1].clone()),
                        Some(seq.clone()),
                    ];
                    let keep = g.reshape(f, &four).unwrap();
                    let one = scalar0(&mut g, 1.0);
                    let inv = g.sub(one, keep).unwrap();
                    let c = scalar0(&mut g, -1e9);
                    g.mul(inv, c).unwrap()
                }
                _ => panic!("{case}"),
            };
            let masked = g.add(s, bias).unwrap();
            let p = g.softmax(masked, -1).unwrap();
            let y = finish(&mut g, p, vt);
            g.output("y", y).unwrap();
            g
        };
        for case in [
            "weak",
            "inverted",
            "nan",
            "float_source",
            "per_query",
            "per_head",
        ] {
            let g = build(case);
            let (after, rewrites) = fused(&g);
            assert_eq!(rewrites, 0, "{case}");
            assert_eq!(count(&after, "attention"), 0, "{case}");
            assert_eq!(after.nodes().len(), g.nodes().len(), "{case}");
        }
    }
}
