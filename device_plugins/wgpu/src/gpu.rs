//! The opened adapter: device, queue, compiled pipelines, and the recorder a
//! run queues its dispatches on (one uniform buffer of parameters, one compute
//! pass, one submission).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rtserve_core::{Error, Result};

use crate::kernels::Kernel;

pub fn device_error(detail: impl Into<String>) -> Error {
    Error::Device {
        device: "wgpu".into(),
        detail: detail.into(),
    }
}

/// Bytes of parameters each dispatch gets (the uniform offset alignment WebGPU guarantees).
pub const PARAM_BYTES: u64 = 256;
pub const PARAM_WORDS: usize = (PARAM_BYTES / 4) as usize;
/// Workgroups along x before the grid folds into y.
const MAX_GROUPS_X: u32 = 65_535;

/// The adapter as `rt.devices()` describes it.
#[derive(Clone, Debug)]
pub struct Found {
    pub adapter_name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

impl Found {
    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() {
            String::new()
        } else {
            format!(", {}", self.driver)
        };
        format!(
            "{} ({}, {}{driver})",
            self.adapter_name, self.backend, self.device_type
        )
    }
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub max_binding: u64,
    pipelines: Mutex<HashMap<Kernel, Arc<wgpu::ComputePipeline>>>,
    /// Bound where a kernel's optional input is absent.
    pub dummy: wgpu::Buffer,
    /// One run (or upload) at a time: runs share the queue and the pipelines.
    lock: Mutex<()>,
}

/// The adapter found, not yet opened: finding it creates no device (no GPU
/// context), so listing the device at import stays cheap.
pub struct Probe {
    pub found: Found,
    adapter: wgpu::Adapter,
    // Held for the adapter's lifetime.
    _instance: wgpu::Instance,
}

impl Probe {
    /// The first adapter wgpu offers (a high-performance one preferred; a
    /// software one such as lavapipe only when nothing else exists).
    pub fn find() -> std::result::Result<Probe, String> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let request = |force_fallback_adapter| {
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter,
                compatible_surface: None,
                ..Default::default()
            }))
        };
        let adapter = request(false).or_else(|_| request(true)).map_err(|e| {
            format!(
                "no GPU adapter (Vulkan, Metal or DX12) found: {e}; on Linux without a GPU, \
                 install Mesa's lavapipe (mesa-vulkan-drivers)"
            )
        })?;
        let info = adapter.get_info();
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(format!("adapter {} has no compute shaders", info.name));
        }
        Ok(Probe {
            found: Found {
                adapter_name: info.name.clone(),
                backend: format!("{:?}", info.backend).to_lowercase(),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_owned(),
            },
            adapter,
            _instance: instance,
        })
    }
}

impl Gpu {
    /// Opens the probed adapter with its own limits.
    pub fn open(probe: &Probe) -> std::result::Result<Gpu, String> {
        let adapter = &probe.adapter;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("rtserve"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| format!("opening {}: {e}", probe.found.adapter_name))?;
        // Errors are caught by error scopes around each prepare and run;
        // anything else is reported, never a panic in the caller's thread.
        device.on_uncaptured_error(Arc::new(|e| eprintln!("rtserve wgpu: {e}")));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            max_binding: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            dummy,
            lock: Mutex::new(()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` inside a validation and out-of-memory error scope.
    pub fn checked<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let invalid = pollster::block_on(validation.pop());
        let out_of_memory = pollster::block_on(oom.pop());
        if let Some(e) = out_of_memory {
            return Err(Error::OutOfMemory {
                what: format!("wgpu device, {what} ({e})"),
                bytes: 0,
            });
        }
        if let Some(e) = invalid {
            return Err(device_error(format!("{what}: {e}")));
        }
        out
    }

    /// The compute pipeline of `kernel`, compiled on first use.
    pub fn pipeline(&self, kernel: Kernel) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut map = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(&kernel) {
            return Ok(p.clone());
        }
        let pipeline = self.checked(&format!("compiling kernel '{}'", kernel.name()), || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                });
            Ok(self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.name()),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                }))
        })?;
        let pipeline = Arc::new(pipeline);
        map.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    pub fn new_buffer(&self, bytes: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        if bytes > self.max_binding {
            return Err(Error::OutOfMemory {
                what: format!(
                    "a wgpu buffer (the adapter binds at most {} bytes)",
                    self.max_binding
                ),
                bytes: u128::from(bytes),
            });
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(16).next_multiple_of(16),
            usage,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `bytes` (zero-padded to whole words).
    pub fn upload(&self, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let buf = self.new_buffer(bytes.len() as u64, storage_usage())?;
        self.write(&buf, bytes);
        Ok(buf)
    }

    /// Queues a write of `bytes` at the start of `buf` (padded to a multiple of 4).
    pub fn write(&self, buf: &wgpu::Buffer, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(buf, 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buf, 0, &padded);
        }
    }

    /// Copies `(buffer, bytes)` pairs back to the host after all queued work.
    pub fn read_back(
        &self,
        mut encoder: wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, usize)],
    ) -> Result<Vec<Vec<u8>>> {
        let mut offsets = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for (_, bytes) in parts {
            offsets.push(total);
            total += (*bytes as u64).next_multiple_of(4);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        for ((buf, bytes), &at) in parts.iter().zip(&offsets) {
            let size = (*bytes as u64).next_multiple_of(4);
            if size > 0 {
                encoder.copy_buffer_to_buffer(buf, 0, &staging, at, size);
            }
        }
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| device_error("the read-back was dropped"))?
            .map_err(|e| device_error(format!("mapping the read-back buffer: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| device_error(format!("reading the read-back buffer: {e}")))?;
            parts
                .iter()
                .zip(&offsets)
                .map(|((_, bytes), &at)| view[at as usize..at as usize + bytes].to_vec())
                .collect()
        };
        staging.unmap();
        Ok(out)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| device_error(format!("waiting for the GPU: {e}")))
    }
}

pub fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC
}

/// A device buffer of a run: back to its pool when the last value using it is dropped.
pub struct GpuBuf {
    pub buffer: wgpu::Buffer,
    pool: Option<Arc<Pool>>,
}

impl GpuBuf {
    /// A buffer that is not pooled (weights, buffers handed out by `alloc`).
    pub fn owned(buffer: wgpu::Buffer) -> GpuBuf {
        GpuBuf { buffer, pool: None }
    }
}

impl Drop for GpuBuf {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(self.buffer.clone());
        }
    }
}

/// Free buffers kept across runs, so a steady stream of same-shaped runs
/// allocates nothing. Work is queued in order on one queue, so a buffer whose
/// last reader is queued may be handed to a later node of the same run.
/// Buffers no run has taken for two runs are released (`end_run`), so runs of
/// changing shapes do not hoard memory.
#[derive(Default)]
pub struct Pool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// (buffer, the run that last took it)
    free: Vec<(wgpu::Buffer, u64)>,
    run: u64,
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn take(self: &Arc<Self>, gpu: &Gpu, bytes: usize) -> Result<Arc<GpuBuf>> {
        let want = (bytes as u64).max(16).next_multiple_of(16);
        let mut state = self.state();
        // Best fit among buffers at most twice the size asked for.
        let pick = state
            .free
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| b.size() >= want && b.size() <= want.saturating_mul(2))
            .min_by_key(|(_, (b, _))| b.size())
            .map(|(i, _)| i);
        let buffer = match pick {
            Some(i) => state.free.swap_remove(i).0,
            None => {
                drop(state);
                // Round up (to 1/8 of the power of two above) so near sizes share buffers.
                let step = (want.next_power_of_two() / 8).max(16);
                gpu.new_buffer(want.next_multiple_of(step), storage_usage())?
            }
        };
        Ok(Arc::new(GpuBuf {
            buffer,
            pool: Some(self.clone()),
        }))
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let mut state = self.state();
        let run = state.run;
        state.free.push((buffer, run));
    }

    /// Called after each run: releases the buffers the last two runs left unused.
    pub fn end_run(&self) {
        let mut state = self.state();
        state.run += 1;
        let run = state.run;
        state.free.retain(|(_, last)| last + 2 >= run);
    }
}

/// A run's queued dispatches: parameters go into one uniform buffer, the
/// dispatches into one compute pass.
pub struct Recorder<'g> {
    pub gpu: &'g Gpu,
    pub pool: Arc<Pool>,
    params: Vec<u32>,
    dispatches: Vec<Dispatch>,
}

struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    buffers: Vec<wgpu::Buffer>,
    groups: (u32, u32, u32),
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu, pool: Arc<Pool>) -> Recorder<'g> {
        Recorder {
            gpu,
            pool,
            params: Vec::new(),
            dispatches: Vec::new(),
        }
    }

    /// A pooled buffer of at least `bytes`.
    pub fn temp(&self, bytes: usize) -> Result<Arc<GpuBuf>> {
        self.pool.take(self.gpu, bytes)
    }

    /// Queues `kernel` over `groups` workgroups (folded into x and y when
    /// there are more than 65535) with `params` and storage `buffers` bound
    /// at 1, 2, ... in order.
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: usize,
    ) -> Result<()> {
        let groups = u32::try_from(groups)
            .map_err(|_| device_error(format!("{}: {groups} workgroups", kernel.name())))?;
        let x = groups.min(MAX_GROUPS_X);
        self.dispatch_3d(kernel, params, buffers, (x, groups.div_ceil(x.max(1)), 1))
    }

    pub fn dispatch_3d(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        if params.len() > PARAM_WORDS {
            return Err(Error::Internal(format!(
                "{}: {} parameter words",
                kernel.name(),
                params.len()
            )));
        }
        let pipeline = self.gpu.pipeline(kernel)?;
        let at = self.params.len();
        self.params.extend_from_slice(params);
        self.params.resize(at + PARAM_WORDS, 0);
        self.dispatches.push(Dispatch {
            pipeline,
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            groups,
        });
        Ok(())
    }

    /// Encodes everything queued into a new command encoder (not yet submitted).
    pub fn encode(self) -> wgpu::CommandEncoder {
        let gpu = self.gpu;
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        if self.dispatches.is_empty() {
            return encoder;
        }
        let bytes: Vec<u8> = self.params.iter().flat_map(|w| w.to_le_bytes()).collect();
        let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: bytes.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&params, 0, &bytes);
        let groups: Vec<wgpu::BindGroup> = self
            .dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: i as u64 * PARAM_BYTES,
                        size: wgpu::BufferSize::new(PARAM_BYTES),
                    }),
                }];
                for (j, b) in d.buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: j as u32 + 1,
                        resource: b.as_entire_binding(),
                    });
                }
                gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &d.pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            })
            .collect();
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("run"),
                timestamp_writes: None,
            });
            for (d, group) in self.dispatches.iter().zip(&groups) {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, d.groups.2);
            }
        }
        encoder
    }
}
