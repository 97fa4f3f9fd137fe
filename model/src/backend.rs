//! The one place where a compute backend is chosen: `--device` names it at run time, cargo
//! features decide which names exist in a build.
// burn-tch is deprecated upstream; feinschliff uses it on purpose (LibTorch's bf16 kernels).
#![cfg_attr(feature = "tch", allow(deprecated))]

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;
pub use burn::tensor::Device;

/// A backend the user can pick with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The pure-Rust CPU backend (burn-flex), f32 compute.
    #[cfg(feature = "flex")]
    Flex,
    /// LibTorch on the CPU; training stores and computes the frozen base in bf16 where the CPU
    /// has AMX, in f32 otherwise (see [`DeviceChoice::preferred_base_dtype`]).
    #[cfg(feature = "tch")]
    TchCpu,
    /// LibTorch on CUDA GPU `N`; training stores and computes the frozen base in bf16.
    #[cfg(feature = "tch")]
    TchCuda(usize),
}

impl DeviceChoice {
    /// The `--device` names this build accepts.
    pub const NAMES: &'static [&'static str] = &[
        #[cfg(feature = "flex")]
        "flex",
        #[cfg(feature = "tch")]
        "tch-cpu",
        #[cfg(feature = "tch")]
        "tch-cuda:N",
    ];

    /// The Burn device (without autodiff).
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => Device::flex(),
            #[cfg(feature = "tch")]
            DeviceChoice::TchCpu => Device::libtorch(),
            #[cfg(feature = "tch")]
            DeviceChoice::TchCuda(index) => Device::libtorch_cuda(index),
        }
    }

    /// The dtype of the frozen base (storage and products) unless the run configuration says
    /// otherwise: bf16 on CUDA and on CPUs with AMX bf16 units (LibTorch's bf16 kernels pay
    /// there), f32 elsewhere — on an AVX-512 CPU without AMX LibTorch's bf16 products ran at
    /// 120–150 GFLOP/s against 190–260 for its f32 ones (BENCHMARKS.md), and flex multiplies in
    /// f32 anyway. Adapters, their gradients and the optimizer state stay f32 everywhere.
    pub fn preferred_base_dtype(self) -> DType {
        match self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => DType::F32,
            #[cfg(feature = "tch")]
            DeviceChoice::TchCpu => match cpu_has_amx_bf16() {
                true => DType::BF16,
                false => DType::F32,
            },
            #[cfg(feature = "tch")]
            DeviceChoice::TchCuda(_) => DType::BF16,
        }
    }

    /// Whether the backend multiplies bf16 matrices in bf16 (LibTorch); flex converts them to
    /// f32 first.
    pub fn has_bf16_matmul(self) -> bool {
        match self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => false,
            #[cfg(feature = "tch")]
            DeviceChoice::TchCpu | DeviceChoice::TchCuda(_) => true,
        }
    }
}

/// Whether this CPU has AMX bf16 tile units, as Linux reports them in `/proc/cpuinfo` (Rust's
/// own detection of AMX is not stable yet); `false` where that file does not exist.
#[cfg(feature = "tch")]
fn cpu_has_amx_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|flag| flag == "amx_bf16"))
    })
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            #[cfg(feature = "flex")]
            "flex" => Ok(DeviceChoice::Flex),
            #[cfg(feature = "tch")]
            "tch-cpu" => Ok(DeviceChoice::TchCpu),
            #[cfg(feature = "tch")]
            other if other.starts_with("tch-cuda:") => other["tch-cuda:".len()..]
                .parse()
                .map(DeviceChoice::TchCuda)
                .map_err(|_| format!("bad device `{other}`: expected tch-cuda:N, N a GPU index")),
            other => Err(format!(
                "unknown device `{other}` (this build has: {}{})",
                Self::NAMES.join(", "),
                match cfg!(feature = "tch") {
                    true => "",
                    false => "; tch-cpu and tch-cuda:N need a build with --features tch",
                }
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => f.write_str("flex"),
            #[cfg(feature = "tch")]
            DeviceChoice::TchCpu => f.write_str("tch-cpu"),
            #[cfg(feature = "tch")]
            DeviceChoice::TchCuda(index) => write!(f, "tch-cuda:{index}"),
        }
    }
}
