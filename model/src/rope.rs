//! Rotary position embedding in the Hugging Face convention (`rotate_half`): dimension `j` is
//! rotated together with dimension `j + head_dim/2`, so HF q/k weights are used as they are.
//! (Burn's `RotaryEncoding` rotates adjacent pairs and would need permuted weights.)

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::{Llama3Rope, RopeConfig, RopeScaling};

/// The inverse frequencies of one attention head; cos/sin are computed per batch from the
/// position ids, so positions may restart anywhere (packed rows) or start late (KV cache).
#[derive(Module, Debug)]
pub struct Rope {
    /// `[head_dim / 2]` inverse frequencies (a constant, not a parameter).
    inv_freq: Tensor<1>,
}

impl Rope {
    /// The rotary embedding for heads of width `head_dim`.
    pub fn new(config: &RopeConfig, head_dim: usize, device: &Device) -> Self {
        let inv_freq = inverse_frequencies(config, head_dim);
        let len = inv_freq.len();
        Self {
            inv_freq: Tensor::from_data(TensorData::new(inv_freq, [len]), device),
        }
    }

    /// `(cos, sin)` of shape `[batch, 1, seq, head_dim]` for position ids `[batch, seq]`.
    pub fn cos_sin(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let [batch, seq] = positions.dims();
        let half = self.inv_freq.dims()[0];
        let angles = positions.float().reshape([batch, seq, 1])
            * self.inv_freq.clone().reshape([1, 1, half]);
        let angles = Tensor::cat(vec![angles.clone(), angles], 2).unsqueeze_dim::<4>(1);
        (angles.clone().cos(), angles.sin())
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]`: `x·cos + rotate_half(x)·sin`.
    pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let half = x.dims()[3] / 2;
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * cos.clone() + rotated * sin.clone()
    }
}

/// `1 / theta^(2i / head_dim)`, rescaled as the config asks; f32 like transformers.
pub fn inverse_frequencies(config: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| (1.0 / config.theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    match config.scaling {
        RopeScaling::Default => base,
        RopeScaling::Llama3(Llama3Rope {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        }) => {
            // transformers' `_compute_llama3_parameters`: long wavelengths are divided by
            // `factor`, short ones kept, and the band in between interpolated smoothly.
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            base.into_iter()
                .map(|freq| {
                    let freq = freq as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_freq_wavelen {
                        freq / factor
                    } else if wavelen < high_freq_wavelen {
                        freq
                    } else {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    scaled as f32
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let default = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Default,
        };
        let llama3 = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3(Llama3Rope {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
        };
        let plain = inverse_frequencies(&default, 128);
        let scaled = inverse_frequencies(&llama3, 128);
        assert_eq!(plain[0], scaled[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() <= plain[63] * 1e-6);
        assert!(
            scaled
                .iter()
                .zip(&plain)
                .any(|(s, p)| s < p && *s > p / 8.0)
        );
    }
}
