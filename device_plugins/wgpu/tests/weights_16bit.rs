//! f16 and bf16 weights stay 16-bit on the device and the GEMM widens them as
//! it loads its tiles: linear and matmul match the CPU device, which reads the
//! same 16-bit values on its scalar tier (its AVX-512 bf16 path also rounds the
//! activations to bf16). The conformance suite's GEMMs are all f32.

use std::collections::HashMap;

use rtserve_core::device::cpu::CpuDevice;
use rtserve_core::device::Device;
use rtserve_core::exec::{CancelToken, Compiled};
use rtserve_core::graph::{Dim, Graph};
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::kernels::testing::uniform;
use rtserve_core::kernels::{set_isa, Isa};
use rtserve_core::{DType, Tensor};
use rtserve_wgpu::WgpuDevice;

fn run(device: &dyn Device, program: &Compiled, x: &Tensor) -> Vec<f32> {
    let exe = device.prepare(program).unwrap();
    let inputs = HashMap::from([("x".to_owned(), x.clone())]);
    let out = exe.run(&inputs, &CancelToken::default()).unwrap();
    out["y"].elements::<f32>().unwrap()
}

#[test]
fn sixteen_bit_weights_match_the_cpu() {
    let device = WgpuDevice::new();
    if let Some(why) = device.unavailable_reason() {
        eprintln!("SKIPPED: no wgpu adapter: {why}");
        return;
    }
    set_isa(Isa::Generic).unwrap();
    let (m, k, n) = (9, 33, 17);
    let x = Tensor::from_slice(&uniform(m * k, 1, -1.0, 1.0), &[m, k]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        for linear in [true, false] {
            let shape = if linear { [n, k] } else { [k, n] };
            let w = Tensor::from_slice(&uniform(n * k, 2, -1.0, 1.0), &shape)
                .unwrap()
                .cast(dtype)
                .unwrap();
            let mut g = Graph::new();
            let xv = g
                .input("x", vec![Dim::Known(m), Dim::Known(k)], DType::F32)
                .unwrap();
            let wv = g.constant(w);
            let y = if linear {
                let b = g.constant(Tensor::from_slice(&uniform(n, 3, -1.0, 1.0), &[n]).unwrap());
                g.linear(xv, wv, Some(b), Activation::Gelu).unwrap()
            } else {
                g.matmul(xv, wv).unwrap()
            };
            g.output("y", y).unwrap();
            let program = Compiled::new(&g).unwrap();
            let want = run(&CpuDevice, &program, &x);
            let got = run(&device, &program, &x);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 + 1e-4 * b.abs(),
                    "{dtype} linear={linear} element {i}: got {a}, want {b}"
                );
            }
        }
    }
}
