//! The conformance suite on the CUDA device, and what the device says where
//! it cannot run. Without an NVIDIA driver (CI) the GPU tests print why and
//! pass without running anything.

use rtserve_core::device::{registry, Device};
use rtserve_core::exec::Compiled;
use rtserve_core::graph::{Dim, Graph};
use rtserve_core::DType;
use rtserve_cuda::CudaDevice;

fn skip_reason(dev: &CudaDevice) -> Option<String> {
    dev.unavailable_reason()
        .map(|why| format!("skipped: the cuda device is unavailable here ({why})"))
}

#[test]
fn conformance_suite_passes_on_cuda() {
    let dev = CudaDevice::new();
    if let Some(why) = skip_reason(&dev) {
        eprintln!("{why}");
        return;
    }
    let report = rtserve_conformance::run_suite(&dev);
    eprintln!(
        "cuda ({}): {} cases passed, {} failed",
        dev.info().description,
        report.passed.len(),
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "failures on cuda:\n{}",
        report.failures.join("\n")
    );
    assert!(report.passed.len() >= 47, "{} cases", report.passed.len());
}

#[test]
fn buffers_round_trip_on_the_gpu() {
    let dev = CudaDevice::new();
    if let Some(why) = skip_reason(&dev) {
        eprintln!("{why}");
        return;
    }
    let t = rtserve_core::Tensor::from_slice(&[1.5f32, -2.0, 3.25], &[3]).unwrap();
    let buf = dev.copy_in(&t).unwrap();
    assert_eq!(buf.bytes, 12);
    let back = dev.copy_out(&buf, DType::F32, &[3]).unwrap();
    assert_eq!(back.elements::<f32>().unwrap(), vec![1.5, -2.0, 3.25]);
    assert!(dev.copy_out(&buf, DType::F32, &[4]).is_err());
    dev.free(buf).unwrap();
    dev.synchronize().unwrap();
}

#[test]
fn an_unavailable_device_says_why_and_refuses_work() {
    let dev = CudaDevice::new();
    let info = dev.info();
    assert_eq!(info.name, "cuda");
    if info.available {
        eprintln!(
            "skipped: the cuda device is available here ({})",
            info.description
        );
        return;
    }
    assert!(!info.description.is_empty());
    let mut g = Graph::new();
    let x = g.input("x", vec![Dim::Known(2)], DType::F32).unwrap();
    let y = g
        .unary(rtserve_core::kernels::generic::elementwise::Unary::Exp, x)
        .unwrap();
    g.output("y", y).unwrap();
    let program = Compiled::new(&g).unwrap();
    let err = match dev.prepare(&program) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("prepare should fail where cuda is unavailable"),
    };
    assert!(err.contains(&info.description), "{err}");
    rtserve_cuda::register();
    let err = match registry::get("cuda") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an unavailable device must not be handed out"),
    };
    assert!(
        err.contains("not available here") && err.contains(&info.description),
        "{err}"
    );
    assert!(registry::devices()
        .iter()
        .any(|d| d.name == "cuda" && !d.available));
}
