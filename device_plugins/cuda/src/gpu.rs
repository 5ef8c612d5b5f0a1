//! One GPU opened for rtserve: its context, the one stream every launch goes
//! to, the cuBLAS and cuBLASLt handles, the compiled kernels, and the weights
//! already on it.
//!
//! Everything is queued on one stream, so work is ordered without events
//! (cudarc's event tracking is turned off) and `synchronize` waits for it all.
//! Runs hold [`Gpu::lock`] while they queue work, which keeps the stream's
//! order equal to each run's program order when several threads run at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{result as driver, CudaContext, CudaSlice, CudaStream, DevicePtr};
use rtserve_core::{Error, Result, Tensor};

use crate::kernels::{Arg, Kernels};
use crate::lt::Lt;
use crate::probe::Found;

/// Device memory owned by rtserve (freed on drop, in stream order).
pub struct GpuBuffer {
    pub slice: CudaSlice<u8>,
    pub address: u64,
    pub bytes: usize,
}

/// The key of an uploaded constant: where its host bytes live and what they are.
#[derive(Clone, PartialEq, Eq, Hash)]
struct WeightKey {
    address: usize,
    bytes: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
    dtype: rtserve_core::DType,
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    /// cuBLASLt, for `linear` with its epilogue fused (None: cuBLAS GemmEx only).
    pub lt: Option<Lt>,
    /// How `linear` runs here, in words (which epilogues are fused, or why none).
    pub gemm_path: String,
    pub kernels: Kernels,
    lock: Mutex<()>,
    /// Constants uploaded so far, shared by every program that holds them
    /// (a prefill and a decode graph of one model upload its weights once).
    weights: Mutex<HashMap<WeightKey, Weak<GpuBuffer>>>,
}

pub fn device_error(detail: impl std::fmt::Display) -> Error {
    Error::Device {
        device: "cuda".into(),
        detail: detail.to_string(),
    }
}

impl Gpu {
    /// Opens GPU `ordinal`: context, stream, cuBLAS, and the kernels (NVRTC).
    pub fn open(ordinal: usize, found: Found) -> std::result::Result<Gpu, String> {
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("creating a CUDA context: {e}"))?;
        // SAFETY: rtserve uses this context from one stream only, so no CudaSlice
        // is ever read or written by two streams and events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("creating a CUDA stream: {e}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS: {e}"))?;
        let kernels = Kernels::load(&ctx, found.compute_capability)?;
        let mut gpu = Gpu {
            ctx,
            stream,
            blas,
            lt: None,
            gemm_path: String::new(),
            kernels,
            lock: Mutex::new(()),
            weights: Mutex::new(HashMap::new()),
        };
        let opened = Lt::open(&gpu, found.compute_capability.0)
            .and_then(|mut lt| lt.check_epilogues(&gpu).map(|note| (lt, note)));
        gpu.gemm_path = match opened {
            Ok((lt, note)) => {
                gpu.lt = Some(lt);
                format!("cuBLASLt with fused epilogues ({note})")
            }
            Err(why) => format!("cuBLAS GemmEx and an epilogue kernel (no cuBLASLt: {why})"),
        };
        Ok(gpu)
    }

    /// Serializes the queuing of runs; also binds the context to this thread.
    pub fn lock(&self) -> Result<MutexGuard<'_, ()>> {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.ctx.bind_to_thread().map_err(device_error)?;
        Ok(guard)
    }

    /// `bytes` of uninitialized device memory (at least one byte is mapped).
    pub fn alloc(&self, bytes: usize) -> Result<GpuBuffer> {
        // SAFETY: the memory is written by the caller before it is read.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| {
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    what: "cuda device memory".into(),
                    bytes: bytes as u128,
                }
            } else {
                device_error(format!("allocating {bytes} bytes: {e}"))
            }
        })?;
        let address = slice.device_ptr(&self.stream).0;
        Ok(GpuBuffer {
            slice,
            address,
            bytes,
        })
    }

    /// A copy of `bytes` on the device.
    pub fn upload(&self, bytes: &[u8]) -> Result<GpuBuffer> {
        let mut buf = self.alloc(bytes.len())?;
        if !bytes.is_empty() {
            let mut view = buf.slice.slice_mut(..bytes.len());
            self.stream
                .memcpy_htod(bytes, &mut view)
                .map_err(device_error)?;
        }
        Ok(buf)
    }

    /// The first `bytes.len()` bytes at device `address` into `bytes` (waits for the stream).
    pub fn download(&self, address: u64, bytes: &mut [u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.stream.synchronize().map_err(device_error)?;
        // SAFETY: `address` points to at least `bytes.len()` bytes of device memory
        // owned by a live buffer (the caller's invariant), and the stream is idle.
        unsafe { driver::memcpy_dtoh_sync(bytes, address) }.map_err(device_error)
    }

    /// A constant's device copy, uploaded on first use and shared while alive.
    pub fn weight(&self, t: &Tensor) -> Result<Arc<GpuBuffer>> {
        let key = WeightKey {
            address: t.data_ptr() as usize,
            bytes: t.nbytes(),
            shape: t.shape().to_vec(),
            strides: t.strides().to_vec(),
            dtype: t.dtype(),
        };
        let mut cache = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(buf) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(buf);
        }
        cache.retain(|_, w| w.strong_count() > 0);
        let buf = Arc::new(self.upload(&t.contiguous_bytes()?)?);
        cache.insert(key, Arc::downgrade(&buf));
        Ok(buf)
    }

    /// Launches kernel `name` on the stream.
    pub fn launch(
        &self,
        name: &str,
        grid: u32,
        block: u32,
        shared_bytes: u32,
        args: &[Arg],
    ) -> Result<()> {
        let f = self
            .kernels
            .get(name)
            .ok_or_else(|| Error::Internal(format!("cuda kernel {name} not loaded")))?;
        let mut held: Vec<Arg> = args.to_vec();
        let mut params: Vec<*mut std::ffi::c_void> = held.iter_mut().map(Arg::as_param).collect();
        // SAFETY: `params` points at `held`, which outlives the call; the argument
        // list matches the kernel's C signature (each launch site in ops.rs mirrors
        // kernels.cu), and every pointer argument addresses live device memory.
        unsafe {
            driver::launch_kernel(
                f.cu_function(),
                (grid.max(1), 1, 1),
                (block, 1, 1),
                shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| device_error(format!("launching {name}: {e}")))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(device_error)
    }
}

/// Blocks for a grid-stride kernel over `n` elements at `block` threads.
pub fn grid_for(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, 1 << 20) as u32
}
