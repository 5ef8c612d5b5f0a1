//! The wgpu device passes the conformance suite (every case the CPU runs,
//! against the CPU's scalar reference). Skipped, with the reason printed,
//! where no adapter exists (install Mesa's lavapipe for a software one).

use rtserve_core::device::Device;
use rtserve_wgpu::WgpuDevice;

#[test]
fn wgpu_device_passes_the_suite() {
    let device = WgpuDevice::new();
    if let Some(why) = device.unavailable_reason() {
        eprintln!("SKIPPED: no wgpu adapter: {why}");
        return;
    }
    eprintln!("wgpu adapter: {}", device.info().description);
    let report = rtserve_conformance::run_suite(&device);
    assert!(
        report.failures.is_empty(),
        "{} passed, failures: {:#?}",
        report.passed.len(),
        report.failures
    );
    assert!(
        report.passed.len() >= 80,
        "only {} cases ran",
        report.passed.len()
    );
    eprintln!("{} conformance cases passed", report.passed.len());
}
