//! GEMM throughput of the wgpu device (ignored by default; a benchmark, not a test):
//! `cargo test --release -p rtserve-wgpu --test gemm_bench -- --ignored --nocapture`
//!
//! Two figures per size: one graph run of `x @ W` (W resident; x uploaded and
//! the product downloaded), and the per-product time of a run chaining 8
//! products `((x @ W) @ W) ...`, where the transfers are amortized: that one
//! is the kernel's throughput. 4096³ is measured on hardware adapters only.

use std::collections::HashMap;
use std::time::Instant;

use rtserve_core::device::Device;
use rtserve_core::exec::{CancelToken, Compiled};
use rtserve_core::graph::{Dim, Graph};
use rtserve_core::kernels::testing::uniform;
use rtserve_core::{DType, Tensor};
use rtserve_wgpu::WgpuDevice;

/// Median seconds of one run of `chain` products n x n x n.
fn time_chain(dev: &WgpuDevice, n: usize, chain: usize, rounds: usize) -> f64 {
    let mut g = Graph::new();
    let x = g
        .input("x", vec![Dim::Known(n), Dim::Known(n)], DType::F32)
        .unwrap();
    let scale = 1.0 / (n as f32).sqrt();
    let w = Tensor::from_slice(&uniform(n * n, 2, -scale, scale), &[n, n]).unwrap();
    let w = g.constant(w);
    let mut y = x;
    for _ in 0..chain {
        y = g.matmul(y, w).unwrap();
    }
    g.output("y", y).unwrap();
    let exe = dev.prepare(&Compiled::new(&g).unwrap()).unwrap();
    let inputs = HashMap::from([(
        "x".to_owned(),
        Tensor::from_slice(&uniform(n * n, 1, -1.0, 1.0), &[n, n]).unwrap(),
    )]);
    exe.run(&inputs, &CancelToken::default()).unwrap();
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            exe.run(&inputs, &CancelToken::default()).unwrap();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[rounds / 2]
}

#[test]
#[ignore = "benchmark"]
fn gemm_throughput() {
    let dev = WgpuDevice::new();
    if let Some(why) = dev.unavailable_reason() {
        eprintln!("skipped: no wgpu adapter ({why})");
        return;
    }
    let description = dev.info().description;
    println!("device: {description}");
    let software = description.contains(", Cpu,");
    println!("| m=n=k | measured | ms / product | GFLOP/s |");
    println!("| --- | --- | --- | --- |");
    let sizes: &[usize] = if software { &[1024] } else { &[1024, 4096] };
    for &n in sizes {
        let flops = 2.0 * (n as f64).powi(3);
        let single = time_chain(&dev, n, 1, 5);
        println!(
            "| {n} | one graph run (upload, product, download) | {:.2} | {:.1} |",
            single * 1e3,
            flops / single / 1e9
        );
        let chain = time_chain(&dev, n, 8, 3) / 8.0;
        println!(
            "| {n} | per product, 8 chained in one run | {:.2} | {:.1} |",
            chain * 1e3,
            flops / chain / 1e9
        );
    }
}
