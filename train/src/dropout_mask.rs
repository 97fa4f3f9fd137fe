//! Dropout masks from a counter-based hash: element `i` of the mask with seed `s` is a pure
//! function of `(s, i)`, so a mask costs one hash per element (computed in parallel), can be
//! rebuilt in the backward pass instead of being kept in memory, and is the same on every
//! backend and thread count. Burn's own dropout draws every element through ChaCha and a
//! distribution sampler, which took about 6 % of a training step.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

/// A mask of shape `[rows, cols]` whose elements are `0` with probability `prob` and
/// `1 / (1 - prob)` otherwise (inverted dropout, as PyTorch scales it).
pub fn dropout_mask(seed: u64, [rows, cols]: [usize; 2], prob: f64, device: &Device) -> Tensor<2> {
    let keep = (1.0 / (1.0 - prob)) as f32;
    // An element is dropped when the top 24 bits of its hash, as a fraction, fall below `prob`.
    let threshold = (prob * (1u64 << 24) as f64).round() as u64;
    let mut values = vec![0.0f32; rows * cols];
    values
        .par_chunks_mut(1 << 14)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = (chunk << 14) as u64;
            for (i, v) in out.iter_mut().enumerate() {
                let bits =
                    splitmix64(seed ^ (start + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                *v = if bits >> 40 >= threshold { keep } else { 0.0 };
            }
        });
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Derives the seed of one mask from a parent seed and a position (layer, projection, ...).
pub fn child_seed(parent: u64, index: u64) -> u64 {
    splitmix64(parent ^ splitmix64(index.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// SplitMix64's finaliser: a bijective 64-bit mix with good avalanche.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_drop_at_the_rate_asked_and_scale_the_rest() {
        let device = Device::flex();
        let mask = dropout_mask(7, [400, 500], 0.05, &device);
        let values: Vec<f32> = mask.try_into_vec_as::<f32>().unwrap();
        let dropped = values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64;
        assert!((dropped - 0.05).abs() < 0.002, "dropped fraction {dropped}");
        let keep = 1.0 / 0.95f32;
        assert!(values.iter().all(|&v| v == 0.0 || v == keep));
        // The mean stays 1, as inverted dropout intends.
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        assert!((mean - 1.0).abs() < 0.003, "mean {mean}");
    }

    #[test]
    fn masks_are_reproducible_and_differ_between_seeds() {
        let device = Device::flex();
        let a: Vec<f32> = dropout_mask(1, [64, 64], 0.5, &device)
            .try_into_vec_as::<f32>()
            .unwrap();
        let b: Vec<f32> = dropout_mask(1, [64, 64], 0.5, &device)
            .try_into_vec_as::<f32>()
            .unwrap();
        let c: Vec<f32> = dropout_mask(child_seed(1, 0), [64, 64], 0.5, &device)
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
