//! The built-in CPU device passes the conformance suite (at its best ISA tier,
//! against the scalar tier).

#[test]
fn cpu_device_passes_the_suite() {
    let report = rtserve_conformance::run_suite(&rtserve_core::device::cpu::CpuDevice);
    assert!(
        report.failures.is_empty(),
        "failures: {:#?}",
        report.failures
    );
    assert!(
        report.passed.len() >= 80,
        "only {} cases ran",
        report.passed.len()
    );
}
