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
//! the kernel's skipped key, for any score of realistic size. Everything else
//! stays unfused: padding masks and other mask values, masks computed at run
//! time, scaling applied to Q or K, log_softmax, softmax over another axis,
//! and any intermediate (scores, probs) that something else also reads.

use std::collections::HashMap;

use crate::dtype::DType;
use crate::error::Result;
use crate::graph::{Dim, Graph, Op, TensorType, ValueId};
use crate::kernels::generic::elementwise::Binary;
use crate::tensor::Tensor;

use super::{constant_of, live, live_readers, only_read_by, output_mask, PassOutput, Rebuild};

/// A forbidden position's mask value must be at most this (or -inf).
pub const MASKED_AT_MOST: f32 = -1e9;

const TO_HEADS_FIRST: [usize; 4] = [0, 2, 1, 3];
const K_TRANSPOSED: [usize; 4] = [0, 2, 3, 1];

/// One matched pattern: the fused node's inputs and attributes.
struct Fusion {
    q: ValueId,
    k: ValueId,
    v: ValueId,
    causal: bool,
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
            has_key_padding_mask: false,
        };
        let inputs = vec![rebuild.value(f.q), rebuild.value(f.k), rebuild.value(f.v)];
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
        let (scaled, causal) = self.strip_causal_mask(masked);
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
        let fusion = |transpose_back| Fusion {
            q,
            k,
            v,
            causal,
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

    /// The scores under a causal mask `v` and true; else `v` itself (maybe
    /// some other mask, which the scale and matmul steps then fail to match)
    /// and false.
    fn strip_causal_mask(&self, v: ValueId) -> (ValueId, bool) {
        let node = &self.graph.nodes()[v];
        // The mask's output must be the scores' type: no broadcasting growth.
        let under = |scores: ValueId| {
            (self.only_feeds(scores, v) && *self.ty(scores) == node.out).then_some((scores, true))
        };
        let zero = |x: f32| x == 0.0;
        let one = |x: f32| x == 1.0;
        let found = match (&node.op, node.inputs.as_slice()) {
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
        };
        found.unwrap_or((v, false))
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
    use crate::passes::testing::{assert_same_values, count};

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
}
