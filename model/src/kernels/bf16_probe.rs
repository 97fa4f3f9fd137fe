//! The start-up probe that decides whether the frozen base multiplies in bf16 on flex: the
//! same product (a layer's `x Wᵀ` and `d_y W` at the model's shape) timed with f32 `gemm` and
//! with the bf16 kernel, alternating, best of a few. A CPU's flags say whether bf16 products
//! exist, not whether they are faster: on an AVX-512 Xeon without AMX `vdpbf16ps` runs at the
//! f32 FMA rate, on AMD Zen 4/5 at twice it or more.

use std::time::Instant;

use half::bf16;

use super::bf16_matmul;
use super::matmul::{Operand, Read, gemm_into};

/// Timed repetitions of each kind (after one untimed).
const REPEATS: usize = 3;

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Probe {
    /// `[rows, in, out]` of the product timed.
    pub shape: [usize; 3],
    /// f32 products, GFLOP/s.
    pub f32_gflops: f64,
    /// bf16 products, GFLOP/s; `None` where the CPU lacks AVX512-BF16.
    pub bf16_gflops: Option<f64>,
}

impl Bf16Probe {
    /// Times `x Wᵀ` and `d_y W` for `x` `[rows, in_features]` and `W` `[out_features,
    /// in_features]` in f32 and (where the CPU has them) in bf16.
    pub fn measure(rows: usize, in_features: usize, out_features: usize) -> Self {
        let shape = [rows, in_features, out_features];
        let flops = 4.0 * (rows * in_features * out_features) as f64;
        let w: Vec<f32> = filler(out_features * in_features);
        let w16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x = filler(rows * in_features);
        let d_y = filler(rows * out_features);
        let (mut y, mut d_x) = (vec![0f32; d_y.len()], vec![0f32; x.len()]);
        let f32_pass = |y: &mut [f32], d_x: &mut [f32]| {
            let (x_op, d_y_op) = (
                Operand::dense(&x, [rows, in_features], Read::AsIs),
                Operand::dense(&d_y, [rows, out_features], Read::AsIs),
            );
            let w_t = Operand::dense(&w, [out_features, in_features], Read::Transposed);
            let w_op = Operand::dense(&w, [out_features, in_features], Read::AsIs);
            gemm_into(y, out_features, false, x_op, w_t, 1.0, true);
            gemm_into(d_x, in_features, false, d_y_op, w_op, 1.0, true);
        };
        let bf16_pass = |y: &mut [f32], d_x: &mut [f32]| {
            let dims = [out_features, in_features];
            bf16_matmul::matmul(&x, rows, &w16, dims, Read::Transposed, 1.0, y, false);
            bf16_matmul::matmul(&d_y, rows, &w16, dims, Read::AsIs, 1.0, d_x, false);
        };
        let has_bf16 = bf16_matmul::available();
        let (mut best_f32, mut best_bf16) = (f64::INFINITY, f64::INFINITY);
        for repeat in 0..=REPEATS {
            let seconds = timed(|| f32_pass(&mut y, &mut d_x));
            if repeat > 0 {
                best_f32 = best_f32.min(seconds);
            }
            if has_bf16 {
                let seconds = timed(|| bf16_pass(&mut y, &mut d_x));
                if repeat > 0 {
                    best_bf16 = best_bf16.min(seconds);
                }
            }
        }
        Self {
            shape,
            f32_gflops: flops / best_f32 / 1e9,
            bf16_gflops: has_bf16.then(|| flops / best_bf16 / 1e9),
        }
    }

    /// bf16 GFLOP/s over f32 GFLOP/s; `None` without bf16 products.
    pub fn speedup(&self) -> Option<f64> {
        self.bf16_gflops.map(|bf16| bf16 / self.f32_gflops)
    }
}

/// Seconds `run` took.
fn timed(run: impl FnOnce()) -> f64 {
    let start = Instant::now();
    run();
    start.elapsed().as_secs_f64()
}

/// `len` values in ±1.3, not all alike (a product of zeros could take a shortcut).
fn filler(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 400.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_both_kinds_where_the_cpu_has_them() {
        let probe = Bf16Probe::measure(64, 96, 80);
        assert!(
            probe.f32_gflops.is_finite() && probe.f32_gflops > 0.0,
            "{probe:?}"
        );
        assert_eq!(
            probe.bf16_gflops.is_some(),
            bf16_matmul::available(),
            "{probe:?}"
        );
        assert!(
            probe.speedup().is_none_or(|s| s.is_finite() && s > 0.0),
            "{probe:?}"
        );
    }

    #[test]
    #[ignore]
    fn timing() {
        for [n, k, m] in [
            [2048, 576, 1536],
            [2048, 1536, 576],
            [2048, 576, 576],
            [2048, 576, 8192],
        ] {
            let p = Bf16Probe::measure(n, k, m);
            eprintln!("{p:?} speedup {:?}", p.speedup());
        }
    }
}
