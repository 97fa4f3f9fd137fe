//! The one place where a compute backend is chosen: `--device` names it at run time, cargo
//! features decide which names exist in a build.
// burn-tch is deprecated upstream; feinschliff uses it on purpose (LibTorch's bf16 kernels).
#![cfg_attr(feature = "tch", allow(deprecated))]

use std::fmt;
use std::str::FromStr;

pub use burn::tensor::Device;

/// A backend the user can pick with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The pure-Rust CPU backend (burn-flex): f32 compute, and bf16 products of the frozen
    /// base through feinschliff's kernel where the CPU has AVX512-BF16 and they pay.
    #[cfg(feature = "flex")]
    Flex,
    /// LibTorch on the CPU; training stores and computes the frozen base in bf16 where a probe
    /// at start-up finds LibTorch's bf16 products faster than its f32 ones.
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

    /// Whether this is flex.
    pub fn is_flex(self) -> bool {
        #[cfg(feature = "flex")]
        if self == DeviceChoice::Flex {
            return true;
        }
        false
    }

    /// Whether this is a CUDA GPU.
    pub fn is_cuda(self) -> bool {
        #[cfg(feature = "tch")]
        if let DeviceChoice::TchCuda(_) = self {
            return true;
        }
        false
    }

    /// Whether the backend multiplies bf16 matrices in bf16: LibTorch always, flex through its
    /// bf16 kernel where the CPU has AVX512-BF16 (elsewhere it converts them to f32 first).
    pub fn has_bf16_matmul(self) -> bool {
        match self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => crate::kernels::bf16_matmul::available(),
            #[cfg(feature = "tch")]
            DeviceChoice::TchCpu | DeviceChoice::TchCuda(_) => true,
        }
    }
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
