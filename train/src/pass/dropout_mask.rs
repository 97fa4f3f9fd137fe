//! Dropout masks from a counter-based hash: element `i` of the mask with seed `s` is a pure
//! function of `(s, i)`, so a mask costs one hash per element (computed in parallel), can be
//! rebuilt in the backward pass instead of being kept in memory, and is the same on every
//! backend and thread count. Burn's own dropout draws every element through ChaCha and a
//! distribution sampler, which took about 6 % of a training step.

use std::cell::OnceCell;
use std::mem::MaybeUninit;

use burn::tensor::{Device, Tensor, TensorData};
use multiversion::multiversion;
use rayon::prelude::*;

use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};

/// Mask elements per parallel task.
const CHUNK: usize = 1 << 14;

/// A mask of shape `[rows, cols]` whose elements are `0` with probability `prob` and
/// `1 / (1 - prob)` otherwise (inverted dropout, as PyTorch scales it).
pub fn dropout_mask(seed: u64, [rows, cols]: [usize; 2], prob: f64, device: &Device) -> Tensor<2> {
    let values = masked(&vec![1.0f32; rows * cols], seed, prob);
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// One dropout mask, applied to tensors of its shape: fused into one pass over host tensors
/// (flex), built once and multiplied in elsewhere.
pub struct Dropout {
    seed: u64,
    prob: f64,
    mask: OnceCell<Tensor<2>>,
}

impl Dropout {
    /// The mask of [`dropout_mask`] with `seed` and `prob`.
    pub fn new(seed: u64, prob: f64) -> Self {
        Self {
            seed,
            prob,
            mask: OnceCell::new(),
        }
    }

    /// `x ⊙ mask`.
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        let device = x.device();
        if is_host(&device) {
            // Into a new buffer on all cores: `x` is usually still held by the pass, so masking
            // it in place would first copy it on one core.
            let x = HostTensor::of(x);
            let values = masked(x.values(), self.seed, self.prob);
            return HostTensor::new_like(&x, values, x.dims()).into_tensor();
        }
        let mask = self
            .mask
            .get_or_init(|| dropout_mask(self.seed, x.dims(), self.prob, &device));
        x * mask.clone()
    }
}

/// `values ⊙ mask` for the mask with `seed` and `prob` over `values.len()` elements, into a
/// new vector, in parallel.
fn masked(values: &[f32], seed: u64, prob: f64) -> Vec<f32> {
    let keep = (1.0 / (1.0 - prob)) as f32;
    // An element is dropped when the top 24 bits of its hash, as a fraction, fall below `prob`.
    let threshold = (prob * (1u64 << 24) as f64).round() as u32;
    // The per-element hash is 32-bit (vectorises twice as wide as a 64-bit one): the seed is
    // folded to 32 bits and element indices wrap past 2³².
    let seed = (seed ^ (seed >> 32)) as u32;
    let mut out = Vec::with_capacity(values.len());
    out.spare_capacity_mut()[..values.len()]
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (out, values))| {
            masked_chunk(values, out, seed, (chunk * CHUNK) as u32, threshold, keep)
        });
    // SAFETY: every element of the first `values.len()` was written above (the chunks of
    // `out` and `values` pair up one to one and cover both).
    unsafe { out.set_len(values.len()) };
    out
}

#[multiversion(targets(
    "x86_64+avx512f+avx512dq+avx512vl+avx512bw+avx2+fma",
    "x86_64+avx2+fma"
))]
fn masked_chunk(
    values: &[f32],
    out: &mut [MaybeUninit<f32>],
    seed: u32,
    first: u32,
    threshold: u32,
    keep: f32,
) {
    for (i, (v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
        let bits = lowbias32(seed ^ first.wrapping_add(i as u32).wrapping_mul(0x9E37_79B9));
        o.write(*v * if bits >> 8 >= threshold { keep } else { 0.0 });
    }
}

/// Derives the seed of one mask from a parent seed and a position (layer, projection, ...).
pub fn child_seed(parent: u64, index: u64) -> u64 {
    splitmix64(parent ^ splitmix64(index.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// Chris Wellons' `lowbias32`: a bijective 32-bit mix with low bias.
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
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

    #[test]
    fn applying_a_dropout_multiplies_by_its_mask() {
        let device = Device::flex();
        let x = Tensor::<2>::random([70, 300], burn::tensor::Distribution::Default, &device);
        let mask = dropout_mask(3, [70, 300], 0.1, &device);
        let expected: Vec<f32> = (x.clone() * mask).try_into_vec_as::<f32>().unwrap();
        let dropped: Vec<f32> = Dropout::new(3, 0.1)
            .apply(x)
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(dropped, expected);
    }
}
