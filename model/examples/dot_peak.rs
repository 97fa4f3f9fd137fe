//! The CPU's in-register peak of f32 FMA (`vfmadd231ps`) against bf16 dot products
//! (`vdpbf16ps`, AVX-512 BF16), on one thread and on every core: the ceiling any f32 or bf16
//! matrix product can reach on this machine without AMX. Operands stay in registers and L1, so
//! memory plays no part. BENCHMARKS.md ("Why bf16 products do not pay on this CPU") quotes it.
//!
//! `cargo run --release -p feinschliff-train --example dot_peak`

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Rows of the register tile: 12 rows × 2 vectors = 24 accumulators, as a GEMM kernel has.
    const ROWS: usize = 12;
    /// Inner-loop iterations per call.
    const DEPTH: usize = 256;

    /// FLOPs of one [`fma_tile`] call: each FMA does 16 lanes × 1 multiply-add.
    pub const FMA_FLOP: usize = DEPTH * ROWS * 2 * 16 * 2;
    /// FLOPs of one [`dot_tile`] call: each `vdpbf16ps` does 16 lanes × 2 multiply-adds.
    pub const DOT_FLOP: usize = DEPTH * ROWS * 2 * 16 * 2 * 2;

    /// `DEPTH` steps of a 12 × 32 f32 tile update with FMAs.
    #[target_feature(enable = "avx512f")]
    pub fn fma_tile(a: &[f32; ROWS], b: &[f32; 32], acc: &mut [[__m512; 2]; ROWS]) {
        // SAFETY: both loads read 16 floats inside `b`.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(b.as_ptr()),
                _mm512_loadu_ps(b.as_ptr().add(16)),
            )
        };
        let mut tile = *acc;
        for _ in 0..DEPTH {
            for (row, &value) in tile.iter_mut().zip(a) {
                let a = _mm512_set1_ps(value);
                row[0] = _mm512_fmadd_ps(a, b0, row[0]);
                row[1] = _mm512_fmadd_ps(a, b1, row[1]);
            }
        }
        *acc = tile;
    }

    /// 32 bf16 values (16 pairs) in a 512-bit integer vector, typed for `vdpbf16ps`.
    fn as_pairs(bits: __m512i) -> __m512bh {
        // SAFETY: both types are 64 plain bytes; this only renames the type.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(bits) }
    }

    /// `DEPTH` steps of a 12 × 32 f32 tile update with bf16 pair dot products.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub fn dot_tile(a: &[u32; ROWS], b: &[u32; 32], acc: &mut [[__m512; 2]; ROWS]) {
        // SAFETY: both loads read 16 u32 inside `b`.
        let (b0, b1) = unsafe {
            (
                as_pairs(_mm512_loadu_si512(b.as_ptr().cast())),
                as_pairs(_mm512_loadu_si512(b.as_ptr().add(16).cast())),
            )
        };
        let mut tile = *acc;
        for _ in 0..DEPTH {
            for (row, &pair) in tile.iter_mut().zip(a) {
                let a = as_pairs(_mm512_set1_epi32(pair as i32));
                row[0] = _mm512_dpbf16_ps(row[0], a, b0);
                row[1] = _mm512_dpbf16_ps(row[1], a, b1);
            }
        }
        *acc = tile;
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::arch::x86_64::_mm512_setzero_ps;
    use std::time::Instant;

    if !is_x86_feature_detected!("avx512f") {
        println!("this CPU has no AVX-512; nothing to measure");
        return;
    }
    let bf16 = is_x86_feature_detected!("avx512bf16");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let calls = 400_000;
    // GFLOP/s of `threads` threads each running `tile` `calls` times.
    let rate = |threads: usize, flop_per_call: usize, tile: &(dyn Fn() + Sync)| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| (0..calls).for_each(|_| tile()));
            }
        });
        (threads * calls * flop_per_call) as f64 / started.elapsed().as_secs_f64() / 1e9
    };
    let fma = || {
        let mut acc = [[unsafe { _mm512_setzero_ps() }; 2]; 12];
        // SAFETY: AVX-512F was detected above.
        unsafe { x86::fma_tile(&[1.0; 12], &[1.0; 32], &mut acc) };
        std::hint::black_box(acc);
    };
    let dot = || {
        let mut acc = [[unsafe { _mm512_setzero_ps() }; 2]; 12];
        // SAFETY: AVX-512 BF16 was detected before this runs; 0x3f80 is bf16 1.0.
        unsafe { x86::dot_tile(&[0x3f80_3f80; 12], &[0x3f80_3f80; 32], &mut acc) };
        std::hint::black_box(acc);
    };
    for threads in [1, cores] {
        print!(
            "{threads} thread(s): f32 FMA {:.0} GFLOP/s",
            rate(threads, x86::FMA_FLOP, &fma)
        );
        match bf16 {
            true => println!(
                ", bf16 dot {:.0} GFLOP/s",
                rate(threads, x86::DOT_FLOP, &dot)
            ),
            false => println!(", no AVX-512 BF16"),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("dot_peak measures x86-64 AVX-512 only");
}
