//! The wgpu device plugin: any GPU with Vulkan, Metal or DX12 behind rtserve's
//! `Device` trait, through wgpu compute pipelines and WGSL kernels.
//!
//! Every op of the conformance suite has a kernel (`kernels/*.wgsl`): a tiled
//! f32 GEMM with the linear epilogue (bias, activation, residual),
//! broadcasting elementwise math, softmax, layer/RMS norm, rope, fused
//! attention with an online softmax, reductions, top-k, and dtype-generic
//! copy, select, gather and cast kernels. Pipelines are compiled once per
//! process (at the first `prepare`), constants are uploaded once per prepared
//! program, and a run keeps every intermediate on the device: only inputs go
//! up and outputs come down.
//!
//! The adapter is looked for when the device is first asked about (no device
//! or GPU context is created then) and opened at the first `prepare` or
//! allocation. Without one (no GPU driver, no Vulkan loader) the device is
//! registered as unavailable and `info()` says why.
//! On a Linux machine without a GPU, Mesa's lavapipe (`mesa-vulkan-drivers`)
//! provides a software Vulkan adapter that runs everything, slowly.

mod executable;
mod gpu;
pub mod kernels;
mod ops;

use std::sync::{Arc, OnceLock};

use rtserve_core::device::{registry, Device, DeviceBuffer, DeviceInfo, Executable};
use rtserve_core::exec::Compiled;
use rtserve_core::graph::Op;
use rtserve_core::{DType, Error, Result, Tensor};

use gpu::{device_error, Gpu, Probe};

/// The device named `wgpu`: the first adapter wgpu finds (high-performance preferred).
#[derive(Default)]
pub struct WgpuDevice {
    probe: OnceLock<std::result::Result<Probe, String>>,
    gpu: OnceLock<std::result::Result<Arc<Gpu>, String>>,
}

impl WgpuDevice {
    /// Nothing is opened until the device is first asked about.
    pub fn new() -> WgpuDevice {
        WgpuDevice::default()
    }

    fn probed(&self) -> &std::result::Result<Probe, String> {
        self.probe.get_or_init(|| {
            std::panic::catch_unwind(Probe::find)
                .unwrap_or_else(|_| Err("looking for a wgpu adapter panicked".to_owned()))
        })
    }

    /// The opened adapter (device, queue, pipelines), made on first use.
    fn gpu(&self) -> Result<Arc<Gpu>> {
        let opened = self.gpu.get_or_init(|| {
            let probe = self.probed().as_ref().map_err(Clone::clone)?;
            // The probe is only read, and a failed open is never retried.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Gpu::open(probe)))
                .unwrap_or_else(|_| Err("opening the wgpu adapter panicked".to_owned()))
                .map(Arc::new)
        });
        opened.clone().map_err(device_error)
    }

    /// Why this machine cannot run the device, or None when it can.
    pub fn unavailable_reason(&self) -> Option<String> {
        self.probed().as_ref().err().cloned()
    }
}

fn wgpu_buffer(buffer: &DeviceBuffer) -> Result<&wgpu::Buffer> {
    buffer.handle.downcast_ref::<wgpu::Buffer>().ok_or_else(|| {
        device_error(format!(
            "buffer belongs to device '{}', not to wgpu",
            buffer.device
        ))
    })
}

impl Device for WgpuDevice {
    fn info(&self) -> DeviceInfo {
        let (description, available) = match self.probed() {
            Ok(probe) => (probe.found.describe(), true),
            Err(why) => (why.clone(), false),
        };
        DeviceInfo {
            name: "wgpu".into(),
            description,
            available,
        }
    }

    fn supports(&self, op: &Op, dtype: DType) -> bool {
        ops::supports(op, dtype)
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let gpu = self.gpu()?;
        let buf = gpu.new_buffer(bytes as u64, gpu::storage_usage())?;
        Ok(DeviceBuffer {
            device: "wgpu".into(),
            bytes,
            handle: Box::new(buf),
        })
    }

    fn free(&self, buffer: DeviceBuffer) -> Result<()> {
        wgpu_buffer(&buffer)?.destroy();
        Ok(())
    }

    fn copy_in(&self, src: &Tensor) -> Result<DeviceBuffer> {
        let gpu = self.gpu()?;
        let bytes = src.contiguous_bytes()?;
        let _guard = gpu.lock();
        let buf = gpu.checked("copy_in", || gpu.upload(&bytes))?;
        Ok(DeviceBuffer {
            device: "wgpu".into(),
            bytes: bytes.len(),
            handle: Box::new(buf),
        })
    }

    fn copy_out(&self, buffer: &DeviceBuffer, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let buf = wgpu_buffer(buffer)?;
        let want = shape.iter().product::<usize>() * dtype.size();
        if want > buffer.bytes {
            return Err(Error::shape(
                "copy_out",
                format!(
                    "{dtype} {shape:?} needs {want} bytes, the buffer holds {}",
                    buffer.bytes
                ),
            ));
        }
        let gpu = self.gpu()?;
        let _guard = gpu.lock();
        let encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut bytes = gpu.checked("copy_out", || gpu.read_back(encoder, &[(buf, want)]))?;
        Tensor::from_bytes(dtype, shape, &bytes.pop().unwrap_or_default())
    }

    fn prepare(&self, program: &Compiled) -> Result<Box<dyn Executable>> {
        let gpu = self.gpu()?;
        Ok(Box::new(executable::WgpuExecutable::new(gpu, program)?))
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu()?.synchronize()
    }
}

/// Registers the `wgpu` device (available or not) with rtserve's registry.
pub fn register() {
    registry::register(Arc::new(WgpuDevice::new()));
}
