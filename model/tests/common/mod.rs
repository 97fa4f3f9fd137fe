//! What the integration tests share.

use burn::tensor::Device;
use feinschliff_model::backend::DeviceChoice;

/// The device the model tests run on: `FEINSCHLIFF_TEST_DEVICE` (a `--device` name such as
/// `tch-cpu` in a `--features tch` build), else flex.
pub fn test_device() -> Device {
    let name = std::env::var("FEINSCHLIFF_TEST_DEVICE").unwrap_or_else(|_| "flex".into());
    let choice: DeviceChoice = name
        .parse()
        .unwrap_or_else(|e| panic!("FEINSCHLIFF_TEST_DEVICE: {e}"));
    choice.device()
}
