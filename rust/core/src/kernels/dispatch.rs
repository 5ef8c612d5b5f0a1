//! Which instruction-set tier the kernels use. Detected once (CPU features),
//! overridable by `RTSERVE_ISA=generic|avx2|avx512` at start-up or by
//! [`set_isa`] (tests run every tier in one process). Kernels read [`isa`] once
//! per call, never inside a hot loop.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable scalar Rust: the reference every SIMD kernel is tested against.
    Generic,
    /// AVX2 + FMA (256-bit).
    Avx2,
    /// AVX-512 F/BW/DQ/VL + FMA (512-bit).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Generic, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "unknown ISA '{name}'; choose one of generic, avx2, avx512"
                ))
            })
    }

    /// Whether this CPU can run the tier.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Generic => true,
            Isa::Avx2 => cpu().avx2_fma,
            Isa::Avx512 => cpu().avx512,
        }
    }
}

/// CPU features the kernels care about, detected once.
#[derive(Copy, Clone, Debug, Default)]
pub struct CpuFeatures {
    pub avx2_fma: bool,
    pub avx512: bool,
    /// AVX512_BF16 (`vdpbf16ps`), used by the bf16-weight GEMM.
    pub avx512_bf16: bool,
    /// AVX512_VNNI (`vpdpbusd`), measured by the int8 peak probe.
    pub avx512_vnni: bool,
    pub f16c: bool,
}

pub fn cpu() -> &'static CpuFeatures {
    static CPU: OnceLock<CpuFeatures> = OnceLock::new();
    CPU.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    let avx2_fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let avx512 = avx2_fma
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl");
    CpuFeatures {
        avx2_fma,
        avx512,
        avx512_bf16: avx512 && std::arch::is_x86_feature_detected!("avx512bf16"),
        avx512_vnni: avx512 && std::arch::is_x86_feature_detected!("avx512vnni"),
        f16c: std::arch::is_x86_feature_detected!("f16c"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

/// The best tier this CPU supports.
pub fn detected() -> Isa {
    Isa::ALL
        .into_iter()
        .rev()
        .find(|i| i.is_supported())
        .unwrap_or(Isa::Generic)
}

/// Tiers this CPU can run, slowest first.
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

const UNSET: u8 = u8::MAX;
static CURRENT: AtomicU8 = AtomicU8::new(UNSET);

fn encode(isa: Isa) -> u8 {
    isa as u8
}

fn decode(v: u8) -> Isa {
    match v {
        0 => Isa::Generic,
        1 => Isa::Avx2,
        _ => Isa::Avx512,
    }
}

/// The start-up choice: `RTSERVE_ISA` when set and supported, else the best detected.
fn initial() -> Isa {
    match std::env::var("RTSERVE_ISA") {
        Ok(v) if !v.trim().is_empty() => match Isa::from_name(&v) {
            Ok(isa) if isa.is_supported() => isa,
            Ok(isa) => {
                eprintln!(
                    "rtserve: RTSERVE_ISA={} is not supported by this CPU; using {}",
                    isa.name(),
                    detected().name()
                );
                detected()
            }
            Err(e) => {
                eprintln!("rtserve: {e}; using {}", detected().name());
                detected()
            }
        },
        _ => detected(),
    }
}

/// The tier kernels use now.
pub fn isa() -> Isa {
    let v = CURRENT.load(Ordering::Relaxed);
    if v != UNSET {
        return decode(v);
    }
    let isa = initial();
    CURRENT.store(encode(isa), Ordering::Relaxed);
    isa
}

/// Switches tier (for tests and benchmarks). Fails when the CPU lacks it.
pub fn set_isa(isa: Isa) -> Result<()> {
    if !isa.is_supported() {
        return Err(Error::Unsupported(format!(
            "ISA {} is not supported by this CPU (available: {})",
            isa.name(),
            available()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    CURRENT.store(encode(isa), Ordering::Relaxed);
    Ok(())
}

/// Runs the expression for the current tier: `dispatch_isa!(isa, generic => e,
/// avx2 => unsafe { .. }, avx512 => unsafe { .. })`. The SIMD arms call
/// `#[target_feature]` functions in their own `unsafe` blocks; that is sound when
/// `isa` came from [`isa`], which only reports a tier that CPU detection (or
/// [`set_isa`]'s check) confirmed. Off x86_64 only the generic arm is compiled.
#[macro_export]
macro_rules! dispatch_isa {
    ($isa:expr, generic => $generic:expr, avx2 => $avx2:expr, avx512 => $avx512:expr $(,)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match $isa {
                $crate::kernels::Isa::Generic => $generic,
                $crate::kernels::Isa::Avx2 => $avx2,
                $crate::kernels::Isa::Avx512 => $avx512,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $isa;
            $generic
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_availability() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()).unwrap(), isa);
        }
        assert!(Isa::from_name("sse9").is_err());
        assert!(available().contains(&Isa::Generic));
        assert!(detected().is_supported());
    }
}
