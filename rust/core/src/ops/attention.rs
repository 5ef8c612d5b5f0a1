//! Fused scaled-dot-product attention: `softmax(q kᵀ · scale + mask) v` with
//! causal and key-padding masks and grouped-query heads, computed tile by tile
//! with an online softmax (see `kernels::frame::attention`) so memory stays
//! O(seq), never O(seq_q × seq_k).
//!
//! Layouts (the Hugging Face "BSHD" order): q [batch, seq_q, heads_q, head_dim],
//! k [batch, seq_k, heads_kv, head_dim], v [batch, seq_k, heads_kv, head_dim_v];
//! output f32 [batch, seq_q, heads_q, head_dim_v], contiguous. Any strides are
//! read in place as long as the last dimension is contiguous; otherwise that
//! input is copied once. f16 and bf16 inputs are converted to f32 up front (one
//! copy of that input); accumulation is always f32.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::frame::attention::{attention_f32, Appended, AttentionProblem, StridedRows};
use crate::kernels::{self, Isa};
use crate::storage::OutBuffer;
use crate::tensor::Tensor;

const OP: &str = "attention";

/// Options of [`attention`].
#[derive(Clone, Debug, Default)]
pub struct AttentionOptions {
    /// Query i may attend key j only if j <= i + (seq_k - seq_q): bottom-right
    /// aligned, so with a KV cache (seq_q < seq_k) the new queries see the whole past.
    pub causal: bool,
    /// Multiplies q·k; default 1/sqrt(head_dim) (1 when head_dim is 0).
    pub scale: Option<f32>,
    /// [batch, seq_k], bool or integer: nonzero = attend (like HF `attention_mask`).
    pub key_padding_mask: Option<Tensor>,
    /// Packed sequences (FlashAttention's `cu_seqlens`): integer offsets [n + 1],
    /// `0 = o[0] <= ... <= o[n] = seq`, with batch 1 and seq_q == seq_k. Rows
    /// `o[s]..o[s+1]` form one sequence that attends only its own keys, so texts of
    /// different lengths share a call with no padding.
    pub segments: Option<Tensor>,
    /// Keys and values appended after k and v along seq: ([batch, n, heads_kv, head_dim],
    /// [batch, n, heads_kv, head_dim_v]). They are read where they are, so a decoder
    /// passes its cache as k, v and the new tokens here, with no copy to join them; the
    /// padding mask covers k only (appended keys are always attended) and causal
    /// alignment counts them. Not with `segments`.
    pub append: Option<(Tensor, Tensor)>,
}

/// Attention with the ISA the runtime uses now ([`kernels::isa`]).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    attention_with_isa(q, k, v, opts, kernels::isa())
}

/// Attention with the kernels of a given tier (tests and benchmarks compare tiers
/// without touching the process-wide setting). Fails if the CPU lacks the tier.
pub fn attention_with_isa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    isa: Isa,
) -> Result<Tensor> {
    if !isa.is_supported() {
        return Err(Error::Unsupported(format!(
            "{OP}: ISA {} is not supported by this CPU",
            isa.name()
        )));
    }
    let dims = check_shapes(q, k, v)?;
    let (q, k, v) = (prepare(q, "q")?, prepare(k, "k")?, prepare(v, "v")?);
    let key_valid = opts
        .key_padding_mask
        .as_ref()
        .map(|m| mask_bytes(m, dims.batch, dims.seq_k))
        .transpose()?;
    let segments = opts
        .segments
        .as_ref()
        .map(|s| segment_offsets(s, &dims))
        .transpose()?;
    let append = opts
        .append
        .as_ref()
        .map(|(ka, va)| {
            if segments.is_some() {
                return Err(Error::Unsupported(format!(
                    "{OP}: appended keys cannot be combined with segments"
                )));
            }
            check_appended(&dims, ka, va)?;
            Ok((prepare(ka, "k_append")?, prepare(va, "v_append")?))
        })
        .transpose()?;
    let scale = opts.scale.unwrap_or(if dims.head_dim == 0 {
        1.0
    } else {
        1.0 / (dims.head_dim as f32).sqrt()
    });
    let out_shape = [dims.batch, dims.seq_q, dims.heads_q, dims.head_dim_v];
    let out_elems = out_shape.iter().product::<usize>();
    let out_bytes = out_elems
        .checked_mul(4)
        .ok_or_else(|| Error::shape(OP, format!("output {out_shape:?} is too large")))?;
    let mut buf = OutBuffer::new(out_bytes, false)?;
    let problem = AttentionProblem {
        q: rows_of(&q)?,
        k: rows_of(&k)?,
        v: rows_of(&v)?,
        batch: dims.batch,
        seq_q: dims.seq_q,
        seq_k: dims.seq_k,
        heads_q: dims.heads_q,
        heads_kv: dims.heads_kv,
        scale,
        causal: opts.causal,
        key_valid: key_valid.as_deref(),
        segments: segments.as_deref(),
        append: match &append {
            Some((ka, va)) => Some(Appended {
                k: rows_of(ka)?,
                v: rows_of(va)?,
                len: ka.shape()[1],
            }),
            None => None,
        },
    };
    attention_f32(&problem, f32_slice_mut(buf.as_mut_slice())?, isa);
    Tensor::from_storage(
        std::sync::Arc::new(buf.into_storage()),
        DType::F32,
        &out_shape,
    )
}

struct Dims {
    batch: usize,
    seq_q: usize,
    seq_k: usize,
    heads_q: usize,
    heads_kv: usize,
    head_dim: usize,
    head_dim_v: usize,
}

fn check_shapes(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let shapes = || format!("q {qs:?}, k {ks:?}, v {vs:?}");
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(Error::shape(
            OP,
            format!(
                "q, k, v must be 4-D [batch, seq, heads, head_dim], got {}",
                shapes()
            ),
        ));
    }
    let mismatch = |what: &str| Error::shape(OP, format!("{what}: {}", shapes()));
    if ks[0] != qs[0] || vs[0] != qs[0] {
        return Err(mismatch("batch sizes differ"));
    }
    if vs[1] != ks[1] {
        return Err(mismatch("k and v have different sequence lengths"));
    }
    if vs[2] != ks[2] {
        return Err(mismatch("k and v have different head counts"));
    }
    if ks[3] != qs[3] {
        return Err(mismatch("q and k have different head_dim"));
    }
    let (heads_q, heads_kv) = (qs[2], ks[2]);
    if (heads_kv == 0 && heads_q != 0) || (heads_kv != 0 && heads_q % heads_kv != 0) {
        return Err(mismatch(&format!(
            "heads_q ({heads_q}) must be a multiple of heads_kv ({heads_kv})"
        )));
    }
    Ok(Dims {
        batch: qs[0],
        seq_q: qs[1],
        seq_k: ks[1],
        heads_q,
        heads_kv,
        head_dim: qs[3],
        head_dim_v: vs[3],
    })
}

/// Appended keys and values: 4-D, the batch of q, k's heads and head dims, one length.
fn check_appended(dims: &Dims, ka: &Tensor, va: &Tensor) -> Result<()> {
    let (ks, vs) = (ka.shape(), va.shape());
    let want_k = |n: usize| [dims.batch, n, dims.heads_kv, dims.head_dim];
    let want_v = |n: usize| [dims.batch, n, dims.heads_kv, dims.head_dim_v];
    if ks.len() != 4 || vs.len() != 4 || ks != want_k(ks[1]) || vs != want_v(ks[1]) {
        return Err(Error::shape(
            OP,
            format!(
                "k_append and v_append must be [batch, n, heads_kv, head_dim] = {:?} and {:?} for some n, got {ks:?} and {vs:?}",
                want_k(ks.get(1).copied().unwrap_or(0)),
                want_v(ks.get(1).copied().unwrap_or(0))
            ),
        ));
    }
    Ok(())
}

/// f32 with a contiguous last dimension: converted or copied only when needed.
fn prepare(t: &Tensor, name: &str) -> Result<Tensor> {
    let t = match t.dtype() {
        DType::F32 => t.clone(),
        DType::F16 | DType::BF16 => t.cast(DType::F32)?,
        other => {
            return Err(Error::dtype(
                OP,
                format!(
                    "{name} must be f32, f16 or bf16, got {other} (shape {:?})",
                    t.shape()
                ),
            ))
        }
    };
    if t.shape()[3] > 1 && t.strides()[3] != 1 {
        return t.contiguous();
    }
    Ok(t)
}

/// The key-padding mask as one byte per (batch, key), nonzero = attend.
fn mask_bytes(mask: &Tensor, batch: usize, seq_k: usize) -> Result<Vec<u8>> {
    if mask.dtype().is_float() {
        return Err(Error::dtype(
            OP,
            format!(
                "key_padding_mask must be bool or integer (nonzero = attend), got {}",
                mask.dtype()
            ),
        ));
    }
    if mask.shape() != [batch, seq_k] {
        return Err(Error::shape(
            OP,
            format!(
                "key_padding_mask must be [batch, seq_k] = [{batch}, {seq_k}], got {:?}",
                mask.shape()
            ),
        ));
    }
    mask.cast(DType::Bool)?.to_bytes()
}

/// The segment offsets as usize, checked: batch 1, seq_q == seq_k, integer 1-D
/// [n + 1] starting at 0, non-decreasing, ending at seq.
fn segment_offsets(offsets: &Tensor, dims: &Dims) -> Result<Vec<usize>> {
    if offsets.dtype().is_float() || offsets.dtype() == DType::Bool || offsets.ndim() != 1 {
        return Err(Error::dtype(
            OP,
            format!(
                "segments must be a 1-D integer tensor of offsets [n + 1], got {} {:?}",
                offsets.dtype(),
                offsets.shape()
            ),
        ));
    }
    if dims.batch != 1 || dims.seq_q != dims.seq_k {
        return Err(Error::shape(
            OP,
            format!(
                "segments pack sequences along seq: they need batch 1 and seq_q == seq_k, got batch {}, seq_q {}, seq_k {}",
                dims.batch, dims.seq_q, dims.seq_k
            ),
        ));
    }
    let values = offsets.cast(DType::I64)?.elements::<i64>()?;
    let ok = values.first() == Some(&0)
        && values.last() == Some(&(dims.seq_q as i64))
        && values.windows(2).all(|w| w[0] <= w[1]);
    if !ok {
        let shown: Vec<i64> = values.iter().take(8).copied().collect();
        return Err(Error::shape(
            OP,
            format!(
                "segments must be offsets 0 = o[0] <= o[1] <= ... <= o[n] = seq ({}), got {shown:?}{}",
                dims.seq_q,
                if values.len() > 8 { " ..." } else { "" }
            ),
        ));
    }
    Ok(values.into_iter().map(|v| v as usize).collect())
}

fn rows_of(t: &Tensor) -> Result<StridedRows<'_>> {
    let s = t.strides();
    Ok(StridedRows {
        data: f32_slice(t.storage().as_bytes())?,
        offset: t.offset(),
        strides: [s[0], s[1], s[2]],
        dim: t.shape()[3],
    })
}

fn f32_slice(bytes: &[u8]) -> Result<&[f32]> {
    // SAFETY: every bit pattern is a valid f32; align_to only yields the aligned middle.
    let (head, floats, _) = unsafe { bytes.align_to::<f32>() };
    if !head.is_empty() {
        return Err(Error::Internal(format!("{OP}: f32 storage is not aligned")));
    }
    Ok(floats)
}

fn f32_slice_mut(bytes: &mut [u8]) -> Result<&mut [f32]> {
    let len = bytes.len();
    // SAFETY: every bit pattern is a valid f32; align_to_mut only yields the aligned middle.
    let (head, floats, _) = unsafe { bytes.align_to_mut::<f32>() };
    if !head.is_empty() || floats.len() * 4 != len {
        return Err(Error::Internal(format!(
            "{OP}: output buffer is not aligned"
        )));
    }
    Ok(floats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dispatch;
    use crate::kernels::generic::attention::attention_reference_f32;

    /// Deterministic values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::testing::uniform(n, seed, -2.0, 2.0)
    }

    fn tensor(shape: [usize; 4], seed: u64) -> Tensor {
        Tensor::from_slice(&values(shape.iter().product(), seed), &shape).unwrap()
    }

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Vec<f32> {
        let dims = check_shapes(q, k, v).unwrap();
        let (q, k, v) = (
            prepare(q, "q").unwrap(),
            prepare(k, "k").unwrap(),
            prepare(v, "v").unwrap(),
        );
        let mask = opts
            .key_padding_mask
            .as_ref()
            .map(|m| mask_bytes(m, dims.batch, dims.seq_k).unwrap());
        let p = AttentionProblem {
            q: rows_of(&q).unwrap(),
            k: rows_of(&k).unwrap(),
            v: rows_of(&v).unwrap(),
            batch: dims.batch,
            seq_q: dims.seq_q,
            seq_k: dims.seq_k,
            heads_q: dims.heads_q,
            heads_kv: dims.heads_kv,
            scale: opts
                .scale
                .unwrap_or(1.0 / (dims.head_dim.max(1) as f32).sqrt()),
            causal: opts.causal,
            key_valid: mask.as_deref(),
            segments: None,
            append: None,
        };
        attention_reference_f32(&p)
    }

    /// Default scale, causal or not, with the byte mask [b, sk] when `with_mask`.
    fn masked(causal: bool, with_mask: bool, mask: &[u8], shape: [usize; 2]) -> AttentionOptions {
        AttentionOptions {
            causal,
            key_padding_mask: with_mask.then(|| Tensor::from_slice(mask, &shape).unwrap()),
            ..Default::default()
        }
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-5 + 1e-4 * w.abs(),
                "{what}: element {i}: got {g}, want {w}"
            );
        }
    }

    #[test]
    fn every_tier_matches_the_reference_on_odd_shapes() {
        let cases = [
            // batch, seq_q, seq_k, heads_q, heads_kv, d, dv, causal
            (1, 1, 1, 1, 1, 1, 1, false),
            (2, 7, 33, 4, 2, 7, 9, true),
            (1, 33, 7, 2, 2, 16, 16, true),
            (3, 17, 130, 4, 1, 33, 80, false),
            (1, 127, 127, 2, 1, 64, 64, true),
            (1, 65, 200, 8, 2, 80, 33, true),
            (2, 5, 0, 2, 2, 8, 8, false),
            (1, 3, 4, 2, 2, 0, 5, false),
        ];
        for (n, &(b, sq, sk, hq, hkv, d, dv, causal)) in cases.iter().enumerate() {
            let q = tensor([b, sq, hq, d], 3 * n as u64);
            let k = tensor([b, sk, hkv, d], 3 * n as u64 + 1);
            let v = tensor([b, sk, hkv, dv], 3 * n as u64 + 2);
            let mask: Vec<u8> = (0..b * sk).map(|i| (i % 5 != 3) as u8).collect();
            for with_mask in [false, true] {
                let opts = masked(causal, with_mask, &mask, [b, sk]);
                let want = reference(&q, &k, &v, &opts);
                for isa in dispatch::available() {
                    let got = attention_with_isa(&q, &k, &v, &opts, isa).unwrap();
                    assert_eq!(got.shape(), &[b, sq, hq, dv]);
                    let what = format!("case {n} mask {with_mask} isa {}", isa.name());
                    assert_close(&got.elements::<f32>().unwrap(), &want, &what);
                }
            }
        }
    }

    #[test]
    fn strided_views_masked_rows_and_huge_scores() {
        // q as a [b, s, h, d] view of a [b, h, s, d] tensor; v with a non-unit last stride.
        let q = tensor([2, 3, 20, 16], 7).transpose(1, 2).unwrap();
        let k = tensor([2, 20, 3, 16], 8);
        let v = tensor([2, 20, 3, 24], 9)
            .index(&[
                crate::IndexItem::Ellipsis,
                crate::IndexItem::Slice {
                    start: None,
                    stop: None,
                    step: 2,
                },
            ])
            .unwrap();
        // Batch 1 attends nothing: its rows must be zeros.
        let mut mask = vec![1i64; 40];
        mask[20..].fill(0);
        let opts = AttentionOptions {
            causal: true,
            scale: Some(0.3),
            key_padding_mask: Some(Tensor::from_slice(&mask, &[2, 20]).unwrap()),
            segments: None,
            append: None,
        };
        let want = reference(&q, &k, &v, &opts);
        let huge = Tensor::from_slice(&vec![1e30f32; 2 * 20 * 3 * 16], &[2, 20, 3, 16]).unwrap();
        for isa in dispatch::available() {
            let got = attention_with_isa(&q, &k, &v, &opts, isa)
                .unwrap()
                .elements::<f32>()
                .unwrap();
            assert_close(&got, &want, isa.name());
            assert!(got[got.len() / 2..].iter().all(|&x| x == 0.0));
            let out =
                attention_with_isa(&huge, &huge, &v, &AttentionOptions::default(), isa).unwrap();
            assert!(
                out.elements::<f32>().unwrap().iter().all(|x| x.is_finite()),
                "{}",
                isa.name()
            );
        }
    }

    #[test]
    fn errors_name_the_op_and_shapes() {
        let q = tensor([1, 2, 4, 8], 1);
        let k = tensor([1, 3, 3, 8], 2);
        let e = attention(&q, &k, &k, &AttentionOptions::default()).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("attention"),
            "{e}"
        );
        assert!(e.to_string().contains("[1, 3, 3, 8]"), "{e}");
        let bad = Tensor::from_slice(&[0i32; 64], &[1, 2, 4, 8]).unwrap();
        let e = attention(&bad, &q, &q, &AttentionOptions::default()).unwrap_err();
        assert!(matches!(e, Error::DType { .. }), "{e}");
        let opts = AttentionOptions {
            key_padding_mask: Some(Tensor::from_slice(&[1.0f32, 0.0], &[1, 2]).unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            attention(&q, &q, &q, &opts),
            Err(Error::DType { .. })
        ));
        let opts = AttentionOptions {
            key_padding_mask: Some(Tensor::from_slice(&[1u8, 0, 1], &[1, 3]).unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            attention(&q, &q, &q, &opts),
            Err(Error::Shape { .. })
        ));
    }

    /// Packed sequences equal each sequence run alone (with and without causal and a
    /// key mask, empty segments included), on every tier.
    #[test]
    fn segments_match_each_sequence_alone() {
        let lens = [5usize, 0, 1, 37, 130, 2];
        let total: usize = lens.iter().sum();
        let mut offsets = vec![0i64];
        for &l in &lens {
            offsets.push(offsets.last().unwrap() + l as i64);
        }
        let (hq, hkv, d, dv) = (4, 2, 19, 24);
        let q = tensor([1, total, hq, d], 41);
        let k = tensor([1, total, hkv, d], 42);
        let v = tensor([1, total, hkv, dv], 43);
        let mask: Vec<u8> = (0..total).map(|i| (i % 7 != 4) as u8).collect();
        for causal in [false, true] {
            for with_mask in [false, true] {
                let key_padding_mask =
                    with_mask.then(|| Tensor::from_slice(&mask, &[1, total]).unwrap());
                let opts = AttentionOptions {
                    causal,
                    scale: None,
                    key_padding_mask: key_padding_mask.clone(),
                    segments: Some(Tensor::from_slice(&offsets, &[offsets.len()]).unwrap()),
                    append: None,
                };
                let mut want = Vec::new();
                for w in offsets.windows(2) {
                    let (a, b) = (w[0] as usize, w[1] as usize);
                    let part = |t: &Tensor| {
                        t.index(&[
                            crate::IndexItem::Slice {
                                start: None,
                                stop: None,
                                step: 1,
                            },
                            crate::IndexItem::Slice {
                                start: Some(a as isize),
                                stop: Some(b as isize),
                                step: 1,
                            },
                        ])
                        .unwrap()
                    };
                    let alone = AttentionOptions {
                        causal,
                        scale: None,
                        key_padding_mask: key_padding_mask.as_ref().map(part),
                        segments: None,
                        append: None,
                    };
                    want.extend(reference(&part(&q), &part(&k), &part(&v), &alone));
                }
                for isa in dispatch::available() {
                    let got = attention_with_isa(&q, &k, &v, &opts, isa).unwrap();
                    assert_eq!(got.shape(), &[1, total, hq, dv]);
                    let what = format!("causal {causal} mask {with_mask} isa {}", isa.name());
                    assert_close(&got.elements::<f32>().unwrap(), &want, &what);
                }
            }
        }
    }

    #[test]
    fn bad_segments_are_refused() {
        let q = tensor([1, 6, 2, 8], 1);
        let two = tensor([2, 3, 2, 8], 2);
        let cases: [(&Tensor, Tensor); 5] = [
            (&q, Tensor::from_slice(&[0i64, 2, 5], &[3]).unwrap()), // does not end at seq
            (&q, Tensor::from_slice(&[1i64, 6], &[2]).unwrap()),    // does not start at 0
            (&q, Tensor::from_slice(&[0i64, 4, 2, 6], &[4]).unwrap()), // decreasing
            (&q, Tensor::from_slice(&[0.0f32, 6.0], &[2]).unwrap()), // float
            (&two, Tensor::from_slice(&[0i64, 3], &[2]).unwrap()),  // batch 2
        ];
        for (n, (x, segments)) in cases.into_iter().enumerate() {
            let opts = AttentionOptions {
                segments: Some(segments),
                ..Default::default()
            };
            let e = attention(x, x, x, &opts).unwrap_err();
            assert!(e.to_string().contains("segments"), "case {n}: {e}");
        }
    }

    #[test]
    fn appended_keys_equal_the_keys_joined() {
        // batch, seq_q, seq_k (cache view), appended, heads_q, heads_kv, d, dv
        let cases = [
            (1, 1, 40, 1, 9, 3, 64, 64),
            (2, 1, 130, 1, 4, 1, 16, 16),
            (2, 3, 7, 3, 2, 2, 8, 5),
            (1, 2, 0, 2, 4, 2, 32, 32),
            (1, 200, 300, 140, 2, 1, 16, 16),
        ];
        let join = |a: &Tensor, b: &Tensor| {
            crate::ops::concat::concat(&[a.clone(), b.clone()], 1).unwrap()
        };
        for (n, &(b, sq, sk, sa, hq, hkv, d, dv)) in cases.iter().enumerate() {
            let seed = 10 * n as u64;
            let (q, k, v) = (
                tensor([b, sq, hq, d], seed),
                tensor([b, sk, hkv, d], seed + 1),
                tensor([b, sk, hkv, dv], seed + 2),
            );
            let (ka, va) = (
                tensor([b, sa, hkv, d], seed + 3),
                tensor([b, sa, hkv, dv], seed + 4),
            );
            let mask: Vec<u8> = (0..b * sk).map(|i| (i % 4 != 1) as u8).collect();
            let joined_mask: Vec<u8> = (0..b)
                .flat_map(|r| {
                    mask[r * sk..(r + 1) * sk]
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n(1, sa))
                })
                .collect();
            for causal in [false, true] {
                for with_mask in [false, true] {
                    let opts = AttentionOptions {
                        append: Some((ka.clone(), va.clone())),
                        ..masked(causal, with_mask, &mask, [b, sk])
                    };
                    let joined = AttentionOptions {
                        key_padding_mask: with_mask
                            .then(|| Tensor::from_slice(&joined_mask, &[b, sk + sa]).unwrap()),
                        append: None,
                        ..opts.clone()
                    };
                    let want = reference(&q, &join(&k, &ka), &join(&v, &va), &joined);
                    for isa in dispatch::available() {
                        let got = attention_with_isa(&q, &k, &v, &opts, isa).unwrap();
                        let what = format!(
                            "case {n} causal {causal} mask {with_mask} isa {}",
                            isa.name()
                        );
                        assert_close(&got.elements::<f32>().unwrap(), &want, &what);
                    }
                }
            }
        }
        // Wrong shapes and segments are refused.
        let q = tensor([1, 1, 2, 8], 1);
        let kv = tensor([1, 4, 1, 8], 2);
        let bad = AttentionOptions {
            append: Some((tensor([1, 1, 2, 8], 3), tensor([1, 1, 2, 8], 4))),
            ..Default::default()
        };
        assert!(matches!(
            attention(&q, &kv, &kv, &bad),
            Err(Error::Shape { .. })
        ));
        let with_segments = AttentionOptions {
            segments: Some(Tensor::from_slice(&[0i64, 4], &[2]).unwrap()),
            append: Some((tensor([1, 1, 1, 8], 3), tensor([1, 1, 1, 8], 4))),
            ..Default::default()
        };
        let q1 = tensor([1, 4, 2, 8], 1);
        assert!(matches!(
            attention(&q1, &kv, &kv, &with_segments),
            Err(Error::Unsupported(_))
        ));
    }
}
