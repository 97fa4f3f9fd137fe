//! A batch of the data crate ([`feinschliff_data::batch::Batch`]) as tensors.

use burn::tensor::{Device, Int, Tensor, TensorData};
use feinschliff_data::batch::Batch;

/// A [`Batch`] as tensors on `device`.
pub struct BatchTensors {
    /// Token ids `[rows, len]`.
    pub ids: Tensor<2, Int>,
    /// Labels `[rows, len]` (`-100`: not trained).
    pub labels: Tensor<2, Int>,
    /// Positions within each example `[rows, len]`.
    pub positions: Tensor<2, Int>,
    /// Example number within each row `[rows, len]`.
    pub segments: Tensor<2, Int>,
}

impl BatchTensors {
    /// Moves `batch` to `device`.
    pub fn new(batch: &Batch, device: &Device) -> Self {
        let shape = [batch.rows, batch.len];
        let tensor = |values: &[i64]| {
            Tensor::<2, Int>::from_data(TensorData::new(values.to_vec(), shape), device)
        };
        Self {
            ids: tensor(&batch.ids),
            labels: tensor(&batch.labels),
            positions: tensor(&batch.positions),
            segments: tensor(&batch.segments),
        }
    }
}
