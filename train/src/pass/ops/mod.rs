//! The operations of the training pass, each with its gradient. Each op chooses its path
//! inside itself: on tensors in host memory (flex, LibTorch's CPU) our kernels run on the
//! tensors' buffers (`kernels::cpu`, `kernels::attention`; on flex the matrix products too,
//! `kernels::matmul`, while LibTorch keeps its own, bf16 ones among them); on other devices
//! Burn operations do the same maths. The Burn version sits beside each kernel call as its
//! reference, and each file's tests run both paths on flex and compare them.

pub mod add;
pub mod attention;
pub mod cross_entropy;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod silu_mul;

pub use add::add;
pub use attention::{KeyMask, attention_backward, attention_forward};
pub use cross_entropy::{Head, head_loss, head_loss_backward};
pub use matmul::{Read, add_matmul, embedding_rows, matmul, scaled_matmul};
pub use norm::{rms_norm, rms_norm_backward};
pub use rope::{RopeTables, Shape, from_heads, rotate_to_heads, to_heads, unrotate_from_heads};
pub use silu_mul::{silu_mul, silu_mul_backward};

/// What the ops' tests share: random inputs on flex and the comparison of both paths.
#[cfg(all(test, feature = "flex"))]
pub(crate) mod testing {
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The device the tests run on: flex, whose tensors take the host path.
    pub fn device() -> Device {
        Device::flex()
    }

    /// A `dims` tensor of values uniform in `[-1, 1)`, the same for the same `seed` (the
    /// device's generator is shared with tests running in parallel).
    pub fn random<const D: usize>(seed: u64, dims: [usize; D]) -> Tensor<D> {
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..dims.iter().product())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_data(TensorData::new(values, dims), &device())
    }

    /// The values of `tensor`.
    pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.try_into_vec_as::<f32>().unwrap()
    }

    /// Asserts that `host` and `reference` have the same shape and differ by at most `tol`
    /// per element, absolutely below magnitude 1 and relatively above.
    pub fn assert_close<const D: usize>(
        what: &str,
        host: Tensor<D>,
        reference: Tensor<D>,
        tol: f32,
    ) {
        assert_eq!(host.dims(), reference.dims(), "{what}: shapes");
        let (host, reference) = (values(host), values(reference));
        let finite = host.iter().chain(&reference).all(|v| v.is_finite());
        assert!(finite, "{what}: values that are not finite");
        let worst = host
            .iter()
            .zip(&reference)
            .map(|(h, r)| (h - r).abs() / r.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(
            worst <= tol,
            "{what}: differs by {worst:e} (tolerance {tol:e})"
        );
    }
}
