//! Time of the tiled dequantizing products against the dense product of the same weight, per
//! block format, at the shapes of a training step — what
//! `model.base_quant` costs on this CPU, and where (dequantization alone is timed too).
//!
//! `cargo run --release -p feinschliff-model --example quant_products -- [N OUT IN]`
//! (all three or none; default 2048 rows of input through SmolLM2's gate_proj, 1536 × 576).

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use feinschliff_model::io::gguf::dequant::GgmlType;
use feinschliff_model::kernels::host_tensor::HostTensor;
use feinschliff_model::kernels::matmul::{Read, matmul};
use feinschliff_model::kernels::quant_matmul::{linear, linear_input_grad};
use feinschliff_model::quant::{BlockFormat, QuantizedMatrix};

/// The median of `runs` timings of `f`, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn host(values: Vec<f32>, dims: [usize; 2]) -> HostTensor<2> {
    HostTensor::of(Tensor::from_data(
        TensorData::new(values, dims),
        &Device::flex(),
    ))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (n, m, k) = match args[..] {
        [n, m, k] => (n, m, k),
        _ => (2048, 1536, 576),
    };
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) / 4000.0)
            .collect()
    };
    let w = values(m * k, 1);
    let (x, d_y) = (
        host(values(n * k, 2), [n, k]),
        host(values(n * m, 3), [n, m]),
    );
    let dense = host(w.clone(), [m, k]);
    let forward = median_ms(5, || {
        drop(matmul(&x, Read::AsIs, &dense, Read::Transposed, 1.0))
    });
    let backward = median_ms(5, || {
        drop(matmul(&d_y, Read::AsIs, &dense, Read::AsIs, 1.0))
    });
    println!(
        "[{n}, {k}] x [{m}, {k}]ᵀ: dense forward {forward:.1} ms, input gradient {backward:.1} ms"
    );
    for format in [
        BlockFormat::Ggml(GgmlType::Q8_0),
        BlockFormat::Ggml(GgmlType::Q4K),
        BlockFormat::Ggml(GgmlType::Q5_0),
        BlockFormat::Nf4,
    ] {
        let Ok(q) = QuantizedMatrix::quantize(format, &w, [m, k]) else {
            continue;
        };
        let decode = median_ms(5, || drop(q.dequantize()));
        let fwd = median_ms(5, || drop(linear(&x, &q)));
        let bwd = median_ms(5, || drop(linear_input_grad(&d_y, &q)));
        println!(
            "{:>5}: forward {fwd:.1} ms ({:.2}x dense), input gradient {bwd:.1} ms ({:.2}x), dequantizing all of W {decode:.1} ms (one core)",
            format.name(),
            forward / fwd,
            backward / bwd
        );
    }
}
