//! The devices this process knows: the CPU, plus any plugin registered at
//! start-up (`register`). `compile(device=...)` looks devices up here.

use std::sync::{Arc, OnceLock, RwLock};

use super::cpu::CpuDevice;
use super::{Device, DeviceInfo};
use crate::error::{Error, Result};

fn registry() -> &'static RwLock<Vec<Arc<dyn Device>>> {
    static DEVICES: OnceLock<RwLock<Vec<Arc<dyn Device>>>> = OnceLock::new();
    DEVICES.get_or_init(|| RwLock::new(vec![Arc::new(CpuDevice)]))
}

/// Adds a device (a plugin crate calls this once); a device of the same name is replaced.
pub fn register(device: Arc<dyn Device>) {
    if let Ok(mut list) = registry().write() {
        let name = device.info().name;
        list.retain(|d| d.info().name != name);
        list.push(device);
    }
}

/// Every registered device, available or not.
pub fn devices() -> Vec<DeviceInfo> {
    registry()
        .read()
        .map(|l| l.iter().map(|d| d.info()).collect())
        .unwrap_or_default()
}

/// The device called `name`, if registered and available here.
pub fn get(name: &str) -> Result<Arc<dyn Device>> {
    let list = registry()
        .read()
        .map_err(|_| Error::Internal("device registry lock poisoned".into()))?;
    let available: Vec<String> = list
        .iter()
        .map(|d| d.info())
        .filter(|i| i.available)
        .map(|i| i.name)
        .collect();
    match list.iter().find(|d| d.info().name == name) {
        Some(d) if d.info().available => Ok(d.clone()),
        Some(d) => Err(Error::Device {
            device: name.into(),
            detail: format!(
                "not available here ({}); available: {}",
                d.info().description,
                available.join(", ")
            ),
        }),
        None => Err(Error::Device {
            device: name.into(),
            detail: format!("unknown device; available: {}", available.join(", ")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_built_in_and_unknown_devices_list_the_available_ones() {
        assert!(devices().iter().any(|d| d.name == "cpu" && d.available));
        assert!(get("cpu").is_ok());
        let err = match get("tpu") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("tpu should not exist"),
        };
        assert!(
            err.contains("unknown device") && err.contains("cpu"),
            "{err}"
        );
    }
}
