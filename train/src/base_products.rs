//! What `auto` means for the frozen base's products (`model.matmul_dtype`, and
//! `model.base_dtype`, which follows it): bf16 on CUDA; on the CPU whatever a short probe at
//! start-up measures faster on this machine at the model's shape — the bf16 kernel against
//! f32 `gemm` on flex, LibTorch's bf16 product against its f32 one on tch-cpu. A CPU's flags
//! say whether bf16 products exist, not whether they pay: on an AVX-512 Xeon without AMX they
//! run at the f32 rate or below, on AMD Zen 4/5 and with AMX at twice it or more. A resumed
//! run keeps the choice its checkpoint recorded, so it continues bit for bit.

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Tensor};
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::config::LlamaConfig;
use feinschliff_model::kernels::bf16_matmul;
use feinschliff_model::kernels::bf16_probe::Bf16Probe;
use feinschliff_model::quant::BaseQuant;

use crate::run_config::RunConfig;

/// bf16 products are chosen when the probe measures them this much faster than f32 ones.
const MIN_SPEEDUP: f64 = 1.1;
/// Models narrower than this keep f32 products: their products are too small for a timing
/// to decide anything (and for bf16 to matter).
const MIN_HIDDEN: usize = 512;
/// Multiply-adds of one probed product, at most (the rows are cut to fit): about 0.1 s.
const PROBE_WORK: usize = 1 << 30;
/// Input and output features of the probed product, at most.
const PROBE_FEATURES: usize = 4096;

/// The dtype `auto` stands for, and the line that says why.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoProducts {
    /// f32 or bf16.
    pub dtype: DType,
    /// Why, for the run's log.
    pub reason: String,
}

impl AutoProducts {
    fn f32(reason: impl Into<String>) -> Self {
        Self {
            dtype: DType::F32,
            reason: reason.into(),
        }
    }
}

/// What `auto` stands for in a run of `config` on `choice` with a model of architecture
/// `model`; `recorded` is the products dtype a resumed run's checkpoint names.
pub fn auto_products(
    config: &RunConfig,
    choice: DeviceChoice,
    model: &LlamaConfig,
    recorded: Option<DType>,
) -> AutoProducts {
    match recorded {
        Some(DType::BF16) if !choice.has_bf16_matmul() => {
            return AutoProducts::f32(
                "the run multiplied in bf16 before its checkpoint, which this CPU cannot: it \
                 continues in f32, close to but not bit for bit the uninterrupted run",
            );
        }
        Some(dtype) => {
            return AutoProducts {
                dtype,
                reason: "as the run's checkpoint recorded".into(),
            };
        }
        None => {}
    }
    if choice.is_cuda() {
        return AutoProducts {
            dtype: DType::BF16,
            reason: "CUDA".into(),
        };
    }
    if config.model.base_quant != BaseQuant::None {
        return AutoProducts::f32("the quantized projections multiply in f32 tiles");
    }
    if choice.is_flex() && !bf16_matmul::available() {
        return AutoProducts::f32("this CPU lacks AVX512-BF16");
    }
    if model.hidden_size < MIN_HIDDEN {
        return AutoProducts::f32(format!(
            "hidden size {} < {MIN_HIDDEN}: too small for bf16 products to pay",
            model.hidden_size
        ));
    }
    let [rows, k, m] = probe_shape(config, model);
    let (f32_gflops, bf16_gflops) = match choice.is_flex() {
        true => {
            let probe = Bf16Probe::measure(rows, k, m);
            (probe.f32_gflops, probe.bf16_gflops.unwrap_or(0.0))
        }
        false => burn_probe(&choice.device(), [rows, k, m]),
    };
    let speedup = bf16_gflops / f32_gflops;
    AutoProducts {
        dtype: match speedup >= MIN_SPEEDUP {
            true => DType::BF16,
            false => DType::F32,
        },
        reason: format!(
            "probe at [{rows}, {k}] x [{k}, {m}]: bf16 {bf16_gflops:.0} GFLOP/s, f32 \
             {f32_gflops:.0} GFLOP/s ({speedup:.2}x; bf16 needs {MIN_SPEEDUP}x)"
        ),
    }
}

/// `f32` or `bf16`, the dtypes a frozen base can have.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The dtype named `name` (`f32` or `bf16`).
pub fn dtype_named(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

/// `[rows, in, out]` of the probed product: the MLP's up projection at the run's rows per
/// micro-batch, features capped at [`PROBE_FEATURES`], rows cut to [`PROBE_WORK`].
fn probe_shape(config: &RunConfig, model: &LlamaConfig) -> [usize; 3] {
    let k = model.hidden_size.min(PROBE_FEATURES);
    let m = model.intermediate_size.clamp(1, PROBE_FEATURES);
    let rows = (config.train.micro_batch * config.data.max_len).min(PROBE_WORK / (k * m));
    [rows.max(16), k, m]
}

/// f32 and bf16 GFLOP/s of Burn's `x Wᵀ` and `d_y W` on `device` (LibTorch's kernels on
/// tch-cpu), alternating, best of three after one untimed.
fn burn_probe(device: &Device, [rows, k, m]: [usize; 3]) -> (f64, f64) {
    let random = |dims: [usize; 2]| Tensor::<2>::random(dims, Distribution::Default, device);
    let (x, w, d_y) = (random([rows, k]), random([m, k]), random([rows, m]));
    let pass = |dtype: DType| {
        let (x, w, d_y) = (
            x.clone().cast(dtype),
            w.clone().cast(dtype),
            d_y.clone().cast(dtype),
        );
        let start = Instant::now();
        let y = x.matmul(w.clone().transpose());
        let d_x = d_y.matmul(w);
        let _ = (y.sum().into_scalar::<f32>(), d_x.sum().into_scalar::<f32>());
        start.elapsed().as_secs_f64()
    };
    let (mut best_f32, mut best_bf16) = (f64::INFINITY, f64::INFINITY);
    for repeat in 0..4 {
        let (f32_seconds, bf16_seconds) = (pass(DType::F32), pass(DType::BF16));
        if repeat > 0 {
            best_f32 = best_f32.min(f32_seconds);
            best_bf16 = best_bf16.min(bf16_seconds);
        }
    }
    let flops = 4.0 * (rows * k * m) as f64;
    (flops / best_f32 / 1e9, flops / best_bf16 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        let toml = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";
        RunConfig::parse(toml, &[]).unwrap()
    }

    fn model(hidden_size: usize) -> LlamaConfig {
        let json = format!(
            r#"{{"model_type": "llama", "hidden_size": {hidden_size}, "intermediate_size": {},
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
                "vocab_size": 64, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}}"#,
            3 * hidden_size
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        LlamaConfig::from_file(&path).unwrap()
    }

    #[test]
    fn small_models_and_quantized_bases_multiply_in_f32() {
        let flex = DeviceChoice::Flex;
        let small = auto_products(&config(), flex, &model(64), None);
        assert_eq!(small.dtype, DType::F32);
        let mut quantized = config();
        quantized.model.base_quant = BaseQuant::Q8_0;
        let auto = auto_products(&quantized, flex, &model(1024), None);
        assert_eq!(auto.dtype, DType::F32, "{}", auto.reason);
        assert!(auto.reason.contains("quantized"), "{}", auto.reason);
    }

    #[test]
    fn the_probe_decides_where_the_cpu_has_bf16_products() {
        let auto = auto_products(&config(), DeviceChoice::Flex, &model(512), None);
        match bf16_matmul::available() {
            true => assert!(auto.reason.contains("GFLOP/s"), "{}", auto.reason),
            false => {
                assert_eq!(auto.dtype, DType::F32);
                assert!(auto.reason.contains("AVX512-BF16"), "{}", auto.reason);
            }
        }
    }

    #[test]
    fn a_resumed_run_keeps_the_recorded_choice_where_it_can() {
        let flex = DeviceChoice::Flex;
        let kept = auto_products(&config(), flex, &model(64), Some(DType::F32));
        assert_eq!(kept.dtype, DType::F32);
        assert!(kept.reason.contains("recorded"), "{}", kept.reason);
        let bf16 = auto_products(&config(), flex, &model(64), Some(DType::BF16));
        match bf16_matmul::available() {
            true => assert_eq!(bf16.dtype, DType::BF16, "{}", bf16.reason),
            false => assert_eq!(bf16.dtype, DType::F32, "{}", bf16.reason),
        }
    }
}
