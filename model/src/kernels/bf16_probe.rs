//! The start-up probe that decides whether the frozen base multiplies in bf16 on the CPU: the
//! same products (a layer's `x Wᵀ` and `d_y W` at the model's shape) timed in f32 and in bf16,
//! alternating, best of a few — on flex f32 `gemm` against the bf16 kernel, on LibTorch its
//! own two products through Burn. A CPU's flags say whether bf16 products exist, not whether
//! they are faster: on an AVX-512 Xeon without AMX `vdpbf16ps` peaks at half the f32 FMA rate,
//! on AMD Zen 4/5 it does twice the multiply-adds of an FMA at the same rate.

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Tensor};
use half::bf16;

use super::bf16_matmul;
use super::matmul::{Operand, Read, gemm_into};

/// Timed repetitions of each kind (after one untimed).
const REPEATS: usize = 3;

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Probe {
    /// `[rows, in, out]` of the products timed.
    pub shape: [usize; 3],
    /// f32 products, GFLOP/s.
    pub f32_gflops: f64,
    /// bf16 products, GFLOP/s; `None` where they do not exist (flex on a CPU without
    /// AVX512-BF16).
    pub bf16_gflops: Option<f64>,
}

impl Bf16Probe {
    /// Times flex's `x Wᵀ` and `d_y W` for `x` `[rows, in_features]` and `W` `[out_features,
    /// in_features]`: f32 `gemm`, and the bf16 kernel where the CPU has AVX512-BF16.
    pub fn host(rows: usize, in_features: usize, out_features: usize) -> Self {
        let dims = [out_features, in_features];
        let w = filler(out_features * in_features, 0);
        let w16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let (x, d_y) = (
            filler(rows * in_features, 1),
            filler(rows * out_features, 2),
        );
        let (mut y, mut d_x) = (vec![0f32; d_y.len()], vec![0f32; x.len()]);
        let mut f32_pass = || {
            let x_op = Operand::dense(&x, [rows, in_features], Read::AsIs);
            let d_y_op = Operand::dense(&d_y, [rows, out_features], Read::AsIs);
            let (w_t, w_op) = (
                Operand::dense(&w, dims, Read::Transposed),
                Operand::dense(&w, dims, Read::AsIs),
            );
            gemm_into(&mut y, out_features, false, x_op, w_t, 1.0, true);
            gemm_into(&mut d_x, in_features, false, d_y_op, w_op, 1.0, true);
        };
        let shape = [rows, in_features, out_features];
        if !bf16_matmul::available() {
            let [f32_seconds] = best_of([&mut f32_pass]);
            return Self::of(shape, f32_seconds, None);
        }
        let (mut y16, mut d_x16) = (vec![0f32; d_y.len()], vec![0f32; x.len()]);
        let mut bf16_pass = || {
            bf16_matmul::matmul(&x, rows, &w16, dims, Read::Transposed, 1.0, &mut y16, false);
            bf16_matmul::matmul(&d_y, rows, &w16, dims, Read::AsIs, 1.0, &mut d_x16, false);
        };
        let [f32_seconds, bf16_seconds] = best_of([&mut f32_pass, &mut bf16_pass]);
        Self::of(shape, f32_seconds, Some(bf16_seconds))
    }

    /// Times Burn's `x Wᵀ` and `d_y W` (shapes as [`Bf16Probe::host`]) on `device` in f32
    /// and in bf16: LibTorch's kernels on tch-cpu.
    pub fn burn(device: &Device, rows: usize, in_features: usize, out_features: usize) -> Self {
        let random = |dims: [usize; 2]| Tensor::<2>::random(dims, Distribution::Default, device);
        let x = random([rows, in_features]);
        let (w, d_y) = (
            random([out_features, in_features]),
            random([rows, out_features]),
        );
        let pass = |dtype: DType| {
            let (x, w, d_y) = (
                x.clone().cast(dtype),
                w.clone().cast(dtype),
                d_y.clone().cast(dtype),
            );
            move || {
                let y = x.clone().matmul(w.clone().transpose());
                let d_x = d_y.clone().matmul(w.clone());
                // Reading a value waits for the products on any device.
                let _ = (y.sum().into_scalar::<f32>(), d_x.sum().into_scalar::<f32>());
            }
        };
        let (mut f32_pass, mut bf16_pass) = (pass(DType::F32), pass(DType::BF16));
        let [f32_seconds, bf16_seconds] = best_of([&mut f32_pass, &mut bf16_pass]);
        let shape = [rows, in_features, out_features];
        Self::of(shape, f32_seconds, Some(bf16_seconds))
    }

    /// The probe of `shape` from the best times of its passes.
    fn of(shape: [usize; 3], f32_seconds: f64, bf16_seconds: Option<f64>) -> Self {
        let flops = 4.0 * shape.iter().product::<usize>() as f64;
        Self {
            shape,
            f32_gflops: flops / f32_seconds / 1e9,
            bf16_gflops: bf16_seconds.map(|seconds| flops / seconds / 1e9),
        }
    }

    /// bf16 GFLOP/s over f32 GFLOP/s; `None` without bf16 products.
    pub fn speedup(&self) -> Option<f64> {
        self.bf16_gflops.map(|bf16| bf16 / self.f32_gflops)
    }
}

/// The best time of each of `passes` over [`REPEATS`] rounds, the passes alternating within a
/// round, after one untimed round.
fn best_of<const N: usize>(mut passes: [&mut dyn FnMut(); N]) -> [f64; N] {
    let mut best = [f64::INFINITY; N];
    for round in 0..=REPEATS {
        for (pass, best) in passes.iter_mut().zip(&mut best) {
            let start = Instant::now();
            pass();
            if round > 0 {
                *best = best.min(start.elapsed().as_secs_f64());
            }
        }
    }
    best
}

/// `len` values in ±1.3, not all alike (a product of zeros could take a shortcut), shifted by
/// `seed`; also the kernels' tests' operands.
pub(crate) fn filler(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) / 400.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_both_kinds_where_the_cpu_has_them() {
        let probe = Bf16Probe::host(64, 96, 80);
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
}
