//! The device boundary. A device (the built-in CPU, or an accelerator plugin
//! crate in `device_plugins/`) implements [`Device`]: it says which ops it
//! supports, manages its memory, and turns a compiled program into an
//! [`Executable`] it runs. Core code never special-cases a device: if a plugin
//! needs more, the trait changes, not the core.

pub mod cpu;
pub mod registry;

use std::any::Any;
use std::collections::HashMap;

use crate::dtype::DType;
use crate::error::Result;
use crate::exec::{CancelToken, Compiled};
use crate::graph::Op;
use crate::passes::PassOptions;
use crate::tensor::Tensor;

/// Memory owned by a device. `handle` is the device's own representation
/// (a host `Tensor` for the CPU, a GPU buffer for a plugin).
pub struct DeviceBuffer {
    pub device: String,
    pub bytes: usize,
    pub handle: Box<dyn Any + Send + Sync>,
}

/// What `rt.devices()` shows for a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    /// Human-readable detail: the CPU's ISA tier, a GPU's adapter name and backend.
    pub description: String,
    /// False when the device is registered but cannot run here (with `description` saying why).
    pub available: bool,
}

/// A compiled program prepared for one device.
pub trait Executable: Send + Sync {
    /// Runs the program on host inputs and returns host outputs.
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        cancel: &CancelToken,
    ) -> Result<HashMap<String, Tensor>>;
}

/// The contract every device implements.
pub trait Device: Send + Sync {
    fn info(&self) -> DeviceInfo;

    /// Whether the device runs `op` with inputs of `dtype`.
    fn supports(&self, op: &Op, dtype: DType) -> bool;

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer>;

    fn free(&self, buffer: DeviceBuffer) -> Result<()>;

    /// Copies a host tensor into device memory.
    fn copy_in(&self, src: &Tensor) -> Result<DeviceBuffer>;

    /// Copies device memory back into a host tensor of `dtype` and `shape`.
    fn copy_out(&self, buffer: &DeviceBuffer, dtype: DType, shape: &[usize]) -> Result<Tensor>;

    /// The optimization pipeline `compile` runs for this device. The default
    /// leaves out what only the CPU's kernels read (pre-packed weights).
    fn pass_options(&self) -> PassOptions {
        PassOptions {
            prepack_weights: false,
        }
    }

    /// Prepares `program` (weights uploaded, kernels built) for repeated runs.
    fn prepare(&self, program: &Compiled) -> Result<Box<dyn Executable>>;

    /// Waits until all queued work on the device has finished.
    fn synchronize(&self) -> Result<()>;
}
