//! The CUDA device plugin: NVIDIA GPUs behind rtserve's `Device` trait.
//!
//! GEMMs run on cuBLAS (f32, or bf16/f16 weights with f32 accumulation);
//! `linear` runs on cuBLASLt where it is installed, with the bias, ReLU, tanh
//! GELU and residual fused into the product's epilogue. Every other op runs a
//! CUDA C kernel of `kernels.cu`, compiled once per process by NVRTC when the
//! first program is prepared; attention is one fused kernel.
//! Constants are uploaded once (and shared between programs that hold the same
//! weights); intermediates live in one device arena laid out by the program's
//! memory plan.
//!
//! The driver, NVRTC, cuBLAS and cuBLASLt are opened at run time, so this crate
//! builds and loads on machines without CUDA: the device is then registered as
//! unavailable and its description says what is missing (`rt.devices()`).
//! cuBLASLt is optional: without it `linear` runs on cuBLAS GemmEx.

pub mod bench;
mod executable;
mod gemm;
mod gpu;
pub mod kernels;
mod lt;
mod ops;
pub mod probe;

use std::sync::{Arc, OnceLock};

use rtserve_core::device::{registry, Device, DeviceBuffer, DeviceInfo, Executable};
use rtserve_core::exec::Compiled;
use rtserve_core::graph::Op;
use rtserve_core::{DType, Error, Result, Tensor};

use gpu::{device_error, Gpu, GpuBuffer};

/// The device named `cuda`: GPU 0 as the driver numbers them.
pub struct CudaDevice {
    ordinal: usize,
    probe: OnceLock<std::result::Result<probe::Found, String>>,
    gpu: OnceLock<std::result::Result<Arc<Gpu>, String>>,
}

impl Default for CudaDevice {
    fn default() -> Self {
        CudaDevice::new()
    }
}

impl CudaDevice {
    /// The device for GPU 0. Nothing is loaded until it is first asked about.
    pub fn new() -> CudaDevice {
        CudaDevice {
            ordinal: 0,
            probe: OnceLock::new(),
            gpu: OnceLock::new(),
        }
    }

    fn found(&self) -> &std::result::Result<probe::Found, String> {
        self.probe.get_or_init(|| probe::probe(self.ordinal))
    }

    /// Why this machine cannot run the device (no driver, no GPU, a missing
    /// library), or None when it can. Cheap after the first call.
    pub fn unavailable_reason(&self) -> Option<String> {
        self.found().as_ref().err().cloned()
    }

    /// The opened GPU (context, stream, cuBLAS, kernels), made on first use.
    fn gpu(&self) -> Result<Arc<Gpu>> {
        let opened = self.gpu.get_or_init(|| {
            let found = self.found().clone()?;
            std::panic::catch_unwind(|| Gpu::open(self.ordinal, found))
                .unwrap_or_else(|_| Err("opening the GPU panicked".to_owned()))
                .map(Arc::new)
        });
        opened.clone().map_err(device_error)
    }
}

impl CudaDevice {
    /// How `linear` runs on this GPU, in words: cuBLASLt and the epilogues it
    /// fuses, or cuBLAS GemmEx and why not cuBLASLt. Opens the GPU.
    pub fn gemm_path(&self) -> Result<String> {
        Ok(self.gpu()?.gemm_path.clone())
    }
}

fn gpu_buffer(buffer: &DeviceBuffer) -> Result<&GpuBuffer> {
    buffer.handle.downcast_ref::<GpuBuffer>().ok_or_else(|| {
        device_error(format!(
            "buffer belongs to device '{}', not to cuda",
            buffer.device
        ))
    })
}

impl Device for CudaDevice {
    fn info(&self) -> DeviceInfo {
        let (description, available) = match self.found() {
            Ok(found) => (found.describe(), true),
            Err(why) => (why.clone(), false),
        };
        DeviceInfo {
            name: "cuda".into(),
            description,
            available,
        }
    }

    fn supports(&self, op: &Op, dtype: DType) -> bool {
        ops::supports(op, dtype)
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let gpu = self.gpu()?;
        let _guard = gpu.lock()?;
        Ok(DeviceBuffer {
            device: "cuda".into(),
            bytes,
            handle: Box::new(gpu.alloc(bytes)?),
        })
    }

    fn free(&self, buffer: DeviceBuffer) -> Result<()> {
        gpu_buffer(&buffer)?;
        drop(buffer);
        Ok(())
    }

    fn copy_in(&self, src: &Tensor) -> Result<DeviceBuffer> {
        let gpu = self.gpu()?;
        let _guard = gpu.lock()?;
        let buf = gpu.upload(&src.contiguous_bytes()?)?;
        Ok(DeviceBuffer {
            device: "cuda".into(),
            bytes: buf.bytes,
            handle: Box::new(buf),
        })
    }

    fn copy_out(&self, buffer: &DeviceBuffer, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let buf = gpu_buffer(buffer)?;
        let want = shape.iter().product::<usize>() * dtype.size();
        if want != buf.bytes {
            return Err(Error::shape(
                "copy_out",
                format!(
                    "{dtype} {shape:?} needs {want} bytes, the buffer holds {}",
                    buf.bytes
                ),
            ));
        }
        let gpu = self.gpu()?;
        let _guard = gpu.lock()?;
        let mut bytes = vec![0u8; want];
        gpu.download(buf.address, &mut bytes)?;
        Tensor::from_bytes(dtype, shape, &bytes)
    }

    fn prepare(&self, program: &Compiled) -> Result<Box<dyn Executable>> {
        let gpu = self.gpu()?;
        Ok(Box::new(executable::CudaExecutable::new(gpu, program)?))
    }

    fn synchronize(&self) -> Result<()> {
        let gpu = self.gpu()?;
        let _guard = gpu.lock()?;
        gpu.synchronize()
    }
}

/// Registers the `cuda` device (available or not) with rtserve's registry.
pub fn register() {
    registry::register(Arc::new(CudaDevice::new()));
}
