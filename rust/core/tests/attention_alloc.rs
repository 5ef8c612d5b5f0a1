//! Acceptance: attention at seq 4096, 8 heads, head_dim 64 never allocates a
//! seq × seq matrix. A counting global allocator records the peak of live heap
//! bytes during the call; the bound is the output itself plus 4 MiB of per-task
//! scratch (O(threads × tile)), while one 4096 × 4096 f32 score matrix alone
//! would be 64 MiB (and all 8 heads' 512 MiB). Rows are checked against an f64
//! reference computed here.
//!
//! One test function on purpose: the counter is process-wide, so nothing else
//! may allocate in this binary while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rtserve_core::ops::attention::{attention, AttentionOptions};
use rtserve_core::Tensor;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call forwards to System with the caller's layout; the counters
// only observe sizes and never affect the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract of GlobalAlloc::alloc.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract of GlobalAlloc::alloc_zeroed.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of GlobalAlloc::dealloc.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract of GlobalAlloc::realloc.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SEQ: usize = 4096;
const HEADS: usize = 8;
const HEAD_DIM: usize = 64;
/// Allowed on top of the output: per-task scratch of the running tasks.
const SCRATCH_BOUND: usize = 4 << 20;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Output row (query i, head h) in f64: scores, max-subtracted softmax, weighted V.
fn reference_row(q: &[f32], k: &[f32], v: &[f32], i: usize, h: usize, causal: bool) -> Vec<f64> {
    let row = |t: &[f32], s: usize| {
        let at = (s * HEADS + h) * HEAD_DIM;
        t[at..at + HEAD_DIM].to_vec()
    };
    let qi = row(q, i);
    let keys = if causal { i + 1 } else { SEQ };
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let scores: Vec<f64> = (0..keys)
        .map(|j| {
            let kj = row(k, j);
            qi.iter()
                .zip(&kj)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0.0; HEAD_DIM];
    for (j, w) in weights.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&row(v, j)) {
            *o += w / total * x as f64;
        }
    }
    out
}

#[test]
fn attention_4096_allocates_no_seq_by_seq_matrix_and_matches_reference() {
    let shape = [1, SEQ, HEADS, HEAD_DIM];
    let n = shape.iter().product();
    let (qv, kv, vv) = (values(n, 1), values(n, 2), values(n, 3));
    let q = Tensor::from_slice(&qv, &shape).unwrap();
    let k = Tensor::from_slice(&kv, &shape).unwrap();
    let v = Tensor::from_slice(&vv, &shape).unwrap();
    let out_bytes = n * 4;
    let seq_by_seq_bytes = SEQ * SEQ * 4;
    assert!(out_bytes + SCRATCH_BOUND < seq_by_seq_bytes);

    // Warm-up: starts the thread pool, whose own allocations are not attention's.
    let small = Tensor::from_slice(&values(64 * 4, 4), &[1, 64, 4, 1]).unwrap();
    attention(&small, &small, &small, &AttentionOptions::default()).unwrap();

    for causal in [false, true] {
        let opts = AttentionOptions {
            causal,
            ..Default::default()
        };
        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let start = std::time::Instant::now();
        let out = attention(&q, &k, &v, &opts).unwrap();
        let elapsed = start.elapsed();
        let peak_extra = PEAK.load(Ordering::SeqCst) - before;
        eprintln!(
            "attention 1x{SEQ}x{HEADS}x{HEAD_DIM} causal={causal}: peak extra heap {peak_extra} bytes \
             (output {out_bytes}, bound {}), {elapsed:.2?}",
            out_bytes + SCRATCH_BOUND
        );
        assert!(
            peak_extra < out_bytes + SCRATCH_BOUND,
            "causal={causal}: peak extra heap {peak_extra} bytes >= output {out_bytes} + {SCRATCH_BOUND}"
        );
        assert_eq!(out.shape(), &shape);

        let got = out.elements::<f32>().unwrap();
        for t in 0..16 {
            let i = (t * 977 + 13) % SEQ;
            for h in [0, 5] {
                let want = reference_row(&qv, &kv, &vv, i, h, causal);
                let at = (i * HEADS + h) * HEAD_DIM;
                for (c, (&g, &w)) in got[at..at + HEAD_DIM].iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 2e-5 + 1e-4 * w.abs(),
                        "causal={causal} row {i} head {h} col {c}: got {g}, want {w}"
                    );
                }
            }
        }
    }
}
