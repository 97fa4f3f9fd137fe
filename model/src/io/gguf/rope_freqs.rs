//! Llama 3.x's RoPE in GGUF: llama.cpp's converter stores the `llama3` scaling of
//! `config.json` as one frequency factor per rotated pair (`rope_freqs.weight`), and llama.cpp
//! divides each base frequency by its factor. The parameters themselves are not in the
//! metadata; this module finds the ones whose factors the tensor holds, so that the imported
//! `config.json` carries the same RoPE for transformers and for us.
//!
//! Only the ratios of `original_max_position_embeddings` to the low and high frequency factors
//! show in the factors, so the search keeps `low_freq_factor` at 1 (every published Llama 3.x
//! does) and tries the context lengths and high frequency factors below.

use std::f64::consts::PI;

use crate::config::Llama3Rope;

/// How far a stored factor may be from the one recomputed (f32 rounding of the converter).
const TOLERANCE: f64 = 1e-6;
/// High frequency factors tried (Llama 3.1/3.2/3.3 use 4).
const HIGH_FREQ_FACTORS: [f64; 3] = [4.0, 2.0, 8.0];

/// The factors llama.cpp's converter (`LlamaModel.generate_extra_tensors`) writes for `p`.
pub fn llama3_factors(p: &Llama3Rope, theta: f64, head_dim: usize) -> Vec<f32> {
    let low_wavelen = p.original_max_position_embeddings / p.low_freq_factor;
    let high_wavelen = p.original_max_position_embeddings / p.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
            let wavelen = 2.0 * PI / f64::from(freq);
            let factor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                p.factor
            } else {
                let smooth = (p.original_max_position_embeddings / wavelen - p.low_freq_factor)
                    / (p.high_freq_factor - p.low_freq_factor);
                1.0 / ((1.0 - smooth) / p.factor + smooth)
            };
            factor as f32
        })
        .collect()
}

/// The `llama3` parameters whose factors equal `factors` (within f32 rounding), if any.
pub fn llama3_parameters(factors: &[f32], theta: f64, head_dim: usize) -> Option<Llama3Rope> {
    if factors.len() != head_dim / 2 || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return None;
    }
    let factor = f64::from(factors.iter().copied().fold(1.0f32, f32::max));
    // Llama 3.x's 8192 first: where the factors cannot tell contexts apart (no frequency in
    // the smoothed band), the published value is the one written.
    let contexts = std::iter::once(13).chain((4..=20).filter(|&log2| log2 != 13));
    let candidates = HIGH_FREQ_FACTORS
        .into_iter()
        .flat_map(move |high_freq_factor| {
            contexts.clone().map(move |log2| Llama3Rope {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor,
                original_max_position_embeddings: f64::from(1u32 << log2),
            })
        });
    candidates.into_iter().find(|p| {
        let expected = llama3_factors(p, theta, head_dim);
        expected
            .iter()
            .zip(factors)
            .all(|(e, f)| (f64::from(*e) - f64::from(*f)).abs() <= TOLERANCE * f64::from(*e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_1_and_3_2_parameters_are_found_again() {
        for (factor, head_dim) in [(8.0, 128), (32.0, 64), (8.0, 16)] {
            let p = Llama3Rope {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            };
            let factors = llama3_factors(&p, 500_000.0, head_dim);
            assert!(factors.contains(&1.0) && factors.contains(&(factor as f32)));
            assert_eq!(llama3_parameters(&factors, 500_000.0, head_dim), Some(p));
        }
    }

    /// llama.cpp rotates by `base_i / factor_i` (the f32 factors of the file); we compute the
    /// frequencies from the recovered parameters as transformers does: the two agree to f32
    /// rounding for Llama 3.1 8B's and 3.2 1B's RoPE.
    #[test]
    fn recovered_rope_equals_llama_cpp_frequencies() {
        use crate::config::{RopeConfig, RopeScaling};
        use crate::rope::inverse_frequencies;
        for factor in [8.0, 32.0] {
            let p = Llama3Rope {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            };
            let (theta, head_dim) = (500_000.0, 128);
            let factors = llama3_factors(&p, theta, head_dim);
            let found = llama3_parameters(&factors, theta, head_dim).unwrap();
            let config = RopeConfig {
                theta,
                scaling: RopeScaling::Llama3(found),
            };
            let ours = inverse_frequencies(&config, head_dim);
            for (i, (ours, factor)) in ours.iter().zip(&factors).enumerate() {
                let base = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                let llama_cpp = base / factor;
                let relative = ((ours - llama_cpp) / llama_cpp).abs();
                assert!(relative <= 3e-7, "frequency {i}: {ours} vs {llama_cpp}");
            }
        }
    }

    #[test]
    fn other_factors_are_refused() {
        let mut factors = vec![1.0f32; 64];
        factors[40] = 3.0;
        assert_eq!(llama3_parameters(&factors, 500_000.0, 128), None);
        assert_eq!(llama3_parameters(&[f32::NAN; 64], 500_000.0, 128), None);
        assert_eq!(llama3_parameters(&[1.0; 10], 500_000.0, 128), None);
    }
}
