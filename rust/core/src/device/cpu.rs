//! The built-in CPU device: host memory, the kernels of `crate::kernels` on
//! the ISA tier chosen at start-up.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Device, DeviceBuffer, DeviceInfo, Executable};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{CancelToken, Compiled};
use crate::graph::Op;
use crate::kernels::{isa, num_threads};
use crate::tensor::Tensor;

pub struct CpuDevice;

struct CpuExecutable {
    program: Arc<Compiled>,
}

impl Executable for CpuExecutable {
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        cancel: &CancelToken,
    ) -> Result<HashMap<String, Tensor>> {
        self.program.run(inputs, cancel)
    }
}

fn host_tensor(buffer: &DeviceBuffer) -> Result<&Tensor> {
    buffer
        .handle
        .downcast_ref::<Tensor>()
        .ok_or_else(|| Error::Device {
            device: "cpu".into(),
            detail: format!("buffer belongs to device '{}', not to cpu", buffer.device),
        })
}

impl Device for CpuDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: "cpu".into(),
            description: format!("{} kernels, {} threads", isa().name(), num_threads()),
            available: true,
        }
    }

    fn supports(&self, op: &Op, dtype: DType) -> bool {
        // Every op runs on the CPU; float math needs float inputs, indices and masks
        // may be integers or bools, and any dtype can be moved or cast.
        // Integer arithmetic wraps like numpy's; reductions take every dtype.
        match op {
            Op::Embedding
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Concat { .. }
            | Op::Slice { .. }
            | Op::Where
            | Op::MaskedFill { .. }
            | Op::Reduce { .. }
            | Op::Cast { .. } => true,
            Op::Input { .. } | Op::Constant(_) => true,
            Op::Binary(b) => dtype.is_float() || (b.takes_integers() && dtype != DType::Bool),
            Op::Unary(u) => dtype.is_float() || (u.takes_integers() && dtype != DType::Bool),
            Op::TopK { .. } => dtype != DType::Bool,
            _ => dtype.is_float(),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let t = Tensor::zeros(DType::U8, &[bytes])?;
        Ok(DeviceBuffer {
            device: "cpu".into(),
            bytes,
            handle: Box::new(t),
        })
    }

    fn free(&self, buffer: DeviceBuffer) -> Result<()> {
        host_tensor(&buffer)?;
        Ok(())
    }

    fn copy_in(&self, src: &Tensor) -> Result<DeviceBuffer> {
        let bytes = src.to_bytes()?;
        let t = Tensor::from_bytes(DType::U8, &[bytes.len()], &bytes)?;
        Ok(DeviceBuffer {
            device: "cpu".into(),
            bytes: bytes.len(),
            handle: Box::new(t),
        })
    }

    fn copy_out(&self, buffer: &DeviceBuffer, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let t = host_tensor(buffer)?;
        Tensor::from_bytes(dtype, shape, &t.to_bytes()?)
    }

    fn pass_options(&self) -> crate::passes::PassOptions {
        crate::passes::PassOptions::default()
    }

    fn prepare(&self, program: &Compiled) -> Result<Box<dyn Executable>> {
        Ok(Box::new(CpuExecutable {
            program: Arc::new(program.clone()),
        }))
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::generic::elementwise::Binary;

    #[test]
    fn buffers_round_trip_and_foreign_buffers_are_refused() {
        let dev = CpuDevice;
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25], &[3]).unwrap();
        let buf = dev.copy_in(&t).unwrap();
        assert_eq!(buf.bytes, 12);
        let back = dev.copy_out(&buf, DType::F32, &[3]).unwrap();
        assert_eq!(back.elements::<f32>().unwrap(), vec![1.5, -2.0, 3.25]);
        assert!(dev.copy_out(&buf, DType::F32, &[4]).is_err());
        let foreign = DeviceBuffer {
            device: "gpu".into(),
            bytes: 4,
            handle: Box::new(0u32),
        };
        assert!(dev.free(foreign).is_err());
        let a = dev.alloc(64).unwrap();
        assert_eq!(a.bytes, 64);
        dev.free(a).unwrap();
        dev.synchronize().unwrap();
        assert!(dev.supports(&Op::Embedding, DType::I64));
        assert!(!dev.supports(&Op::MatMul, DType::I64));
        assert!(dev.supports(&Op::Where, DType::Bool));
        assert!(dev.supports(&Op::Binary(Binary::Add), DType::I32));
        assert!(!dev.supports(&Op::Binary(Binary::Div), DType::I32));
        assert!(dev.info().available);
    }
}
