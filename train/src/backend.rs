//! The one place where a compute backend is chosen: `--device` names it at run time, cargo
//! features decide which names exist in a build.

use std::fmt;
use std::str::FromStr;

pub use burn::tensor::Device;

/// A backend the user can pick with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The pure-Rust CPU backend (burn-flex), f32 compute.
    #[cfg(feature = "flex")]
    Flex,
}

impl DeviceChoice {
    /// The `--device` names this build accepts.
    pub const NAMES: &'static [&'static str] = &[
        #[cfg(feature = "flex")]
        "flex",
    ];

    /// The Burn device (without autodiff).
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => Device::flex(),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            #[cfg(feature = "flex")]
            "flex" => Ok(DeviceChoice::Flex),
            other => Err(format!(
                "unknown device `{other}` (this build has: {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            #[cfg(feature = "flex")]
            DeviceChoice::Flex => f.write_str("flex"),
        }
    }
}
