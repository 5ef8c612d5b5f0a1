//! Whether this machine can run the CUDA device, and if not, why. Every CUDA
//! library is opened at run time (cudarc's `dynamic-loading`), so a machine
//! without the driver or the libraries still loads rtserve; the probe turns
//! each missing piece into a sentence for `rt.devices()`.

use std::ffi::c_int;

use cudarc::driver::{result, sys};

/// The GPU the device will use.
#[derive(Clone, Debug)]
pub struct Found {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    /// The CUDA version the driver supports, as 13000 for 13.0.
    pub driver_version: i32,
    /// libcublasLt.so.13 is there (`linear` with fused epilogues; optional).
    pub cublaslt: bool,
}

impl Found {
    pub fn describe(&self) -> String {
        let (major, minor) = self.compute_capability;
        let gemms = if self.cublaslt {
            "cuBLAS/cuBLASLt GEMMs"
        } else {
            "cuBLAS GEMMs, no cuBLASLt"
        };
        format!(
            "{}, compute {major}.{minor}, {:.0} GiB, driver CUDA {}.{} ({gemms}, NVRTC kernels)",
            self.name,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10
        )
    }
}

/// Looks for the driver, a GPU at `ordinal`, NVRTC and cuBLAS (and notes
/// whether cuBLASLt is there, which is optional). cudarc panics
/// when a library or symbol is missing: that panic becomes the reason too.
pub fn probe(ordinal: usize) -> Result<Found, String> {
    std::panic::catch_unwind(|| probe_unguarded(ordinal)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(format!("loading CUDA failed: {detail}"))
    })
}

const LIBRARY_HINT: &str = "install the CUDA 13 libraries (the toolkit, or the pip packages \
     nvidia-cuda-nvrtc and nvidia-cublas) and put their lib folder on LD_LIBRARY_PATH";

fn probe_unguarded(ordinal: usize) -> Result<Found, String> {
    // SAFETY: only dlopen()s the driver library under its usual names; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcuda.so not found: no NVIDIA driver on this machine".to_owned());
    }
    result::init().map_err(|e| format!("cuInit failed ({e}): no usable NVIDIA GPU"))?;
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
    if count as usize <= ordinal {
        return Err(format!(
            "the NVIDIA driver sees {count} GPU(s), none with ordinal {ordinal}"
        ));
    }
    let dev = result::device::get(ordinal as c_int).map_err(|e| format!("cuDeviceGet: {e}"))?;
    let name = result::device::get_name(dev).map_err(|e| format!("cuDeviceGetName: {e}"))?;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet.
    let memory_bytes =
        unsafe { result::device::total_mem(dev) }.map_err(|e| format!("cuDeviceTotalMem: {e}"))?;
    let attribute = |a| {
        // SAFETY: `dev` is a valid device handle; `a` is a device attribute enum value.
        unsafe { result::device::get_attribute(dev, a) }
            .map_err(|e| format!("cuDeviceGetAttribute: {e}"))
    };
    let compute_capability = (
        attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    let mut driver_version: c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
    unsafe { sys::cuDriverGetVersion(&mut driver_version) };
    // SAFETY: only dlopen()s the library under its usual names; no symbol is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(format!(
            "{name} found, but libnvrtc.so.13 (NVRTC, which compiles the kernels) is missing: {LIBRARY_HINT}"
        ));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(format!(
            "{name} found, but libcublas.so.13 (cuBLAS, which runs the GEMMs) is missing: {LIBRARY_HINT}"
        ));
    }
    // SAFETY: as above. Optional: without it `linear` runs on cuBLAS GemmEx.
    let cublaslt = unsafe { cudarc::cublaslt::sys::is_culib_present() };
    Ok(Found {
        name,
        compute_capability,
        memory_bytes,
        driver_version,
        cublaslt,
    })
}
