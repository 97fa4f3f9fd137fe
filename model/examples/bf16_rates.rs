//! The start-up probe's measurement (`Bf16Probe::host`: flex's f32 `gemm` against the bf16
//! kernel, `x Wᵀ` and `d_y W`) at the shapes of a SmolLM2-135M training step (2048 rows): what
//! BENCHMARKS.md ("bf16 products on flex and the start-up probe") quotes.
//!
//! `cargo run --release -p feinschliff-model --example bf16_rates`

use feinschliff_model::kernels::bf16_probe::Bf16Probe;

fn main() {
    println!("[rows, in] x [in, out]       f32 GFLOP/s  bf16 GFLOP/s  bf16/f32");
    for [rows, k, m] in [
        [2048, 576, 1536],
        [2048, 1536, 576],
        [2048, 576, 576],
        [2048, 576, 8192],
    ] {
        let probe = Bf16Probe::host(rows, k, m);
        let bf16 = probe.bf16_gflops.map_or("-".into(), |g| format!("{g:.0}"));
        let ratio = probe.speedup().map_or("-".into(), |s| format!("{s:.2}"));
        let shape = format!("[{rows}, {k}] x [{k}, {m}]");
        println!(
            "{shape:<28} {:>11.0}  {bf16:>12}  {ratio:>8}",
            probe.f32_gflops
        );
    }
}
