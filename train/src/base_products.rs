//! What `auto` means for the frozen base's products (`model.matmul_dtype`; an `auto`
//! `model.base_dtype` follows it): bf16 on CUDA; on the CPU whatever a short probe at start-up
//! measures faster on this machine at the model's shape (`Bf16Probe`) — the bf16 kernel
//! against f32 `gemm` on flex, LibTorch's bf16 product against its f32 one on tch-cpu. A CPU's
//! flags say whether bf16 products exist, not whether they pay: on an AVX-512 Xeon without
//! AMX they run below the f32 rate, on AMD Zen 4/5 and with AMX above it. A resumed run keeps
//! the choice its checkpoint recorded, so it continues bit for bit. tch-cpu on a CPU with AMX
//! takes bf16 without a probe, as measured there (BENCHMARKS.md).

use burn::tensor::DType;
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::config::LlamaConfig;
use feinschliff_model::kernels::bf16_probe::Bf16Probe;

use crate::run_config::RunConfig;

/// bf16 products are chosen when the probe measures them this much faster than f32 ones.
const MIN_SPEEDUP: f64 = 1.1;
/// Models narrower than this keep f32 products: their products are too small for a timing
/// to decide anything (and for bf16 to matter).
const MIN_HIDDEN: usize = 512;
/// Multiply-adds of one probed product, at most (the rows are cut to fit).
const PROBE_WORK: usize = 1 << 30;
/// Input and output features of the probed product, at most.
const PROBE_FEATURES: usize = 4096;

/// What a run's checkpoint says about its products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A fresh run: nothing.
    Fresh,
    /// A resumed run whose checkpoint names the dtype it multiplied in.
    Dtype(DType),
    /// A resumed run whose checkpoint predates the probe: the rule of that time applied (f32
    /// on flex, bf16 on CUDA and on tch-cpu with AMX).
    BeforeTheProbe,
}

/// The dtype `auto` stands for, and the line that says why.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoProducts {
    /// f32 or bf16.
    pub dtype: DType,
    /// Why, for the run's log.
    pub reason: String,
}

impl AutoProducts {
    fn new(dtype: DType, reason: impl Into<String>) -> Self {
        Self {
            dtype,
            reason: reason.into(),
        }
    }
}

/// What `auto` stands for in a run of `config` on `choice` with a model of architecture
/// `model`, given what its checkpoint `recorded`.
pub fn auto_products(
    config: &RunConfig,
    choice: DeviceChoice,
    model: &LlamaConfig,
    recorded: Recorded,
) -> AutoProducts {
    match recorded {
        Recorded::Dtype(DType::BF16) if !choice.has_bf16_matmul() => {
            return AutoProducts::new(
                DType::F32,
                "the run multiplied in bf16 before its checkpoint, which this CPU cannot: it \
                 continues in f32, close to but not bit for bit the uninterrupted run",
            );
        }
        Recorded::Dtype(dtype) => {
            return AutoProducts::new(dtype, "as the run's checkpoint recorded");
        }
        Recorded::BeforeTheProbe => {
            let dtype = match choice.is_cuda() || (!choice.is_flex() && cpu_has_amx_bf16()) {
                true => DType::BF16,
                false => DType::F32,
            };
            return AutoProducts::new(dtype, "as runs of the checkpoint's version chose");
        }
        Recorded::Fresh => {}
    }
    if choice.is_cuda() {
        return AutoProducts::new(DType::BF16, "CUDA");
    }
    if !choice.is_flex() && cpu_has_amx_bf16() {
        // Measured (BENCHMARKS, the AMX Xeon): tch-cpu 1.72× PEFT's best with bf16 products.
        // The probe through Burn undersells LibTorch's bf16 products (0.55× of f32 where torch
        // itself measures 0.64–0.70× on the AVX-512 Xeon), so AMX is not left to it.
        return AutoProducts::new(DType::BF16, "AMX: LibTorch multiplies bf16 on its tiles");
    }
    if !choice.has_bf16_matmul() {
        return AutoProducts::new(DType::F32, "this CPU lacks AVX512-BF16");
    }
    if model.hidden_size < MIN_HIDDEN {
        let reason = format!(
            "hidden size {} < {MIN_HIDDEN}: too small for bf16 products to pay",
            model.hidden_size
        );
        return AutoProducts::new(DType::F32, reason);
    }
    let [rows, k, m] = probe_shape(config, model);
    let probe = probe(choice, [rows, k, m]);
    let speedup = probe.speedup().unwrap_or(0.0);
    let dtype = match speedup >= MIN_SPEEDUP {
        true => DType::BF16,
        false => DType::F32,
    };
    let reason = format!(
        "probe at [{rows}, {k}] x [{k}, {m}]: bf16 {:.0} GFLOP/s, f32 {:.0} GFLOP/s \
         ({speedup:.2}x; bf16 needs {MIN_SPEEDUP}x)",
        probe.bf16_gflops.unwrap_or(0.0),
        probe.f32_gflops
    );
    AutoProducts::new(dtype, reason)
}

/// The probe of `x Wᵀ` and `d_y W` for `x` `[rows, in]` and `W` `[out, in]` on `choice`:
/// flex's own products, Burn's (LibTorch's) elsewhere.
pub fn probe(choice: DeviceChoice, [rows, k, m]: [usize; 3]) -> Bf16Probe {
    match choice.is_flex() {
        true => Bf16Probe::host(rows, k, m),
        false => Bf16Probe::burn(&choice.device(), rows, k, m),
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

/// Whether this CPU has AMX bf16 tile units, as Linux reports them in `/proc/cpuinfo`
/// (Rust's own detection of AMX is not stable yet); `false` where that file does not exist.
fn cpu_has_amx_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|flag| flag == "amx_bf16"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use feinschliff_model::kernels::bf16_matmul;

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
    fn small_models_multiply_in_f32() {
        let small = auto_products(&config(), DeviceChoice::Flex, &model(64), Recorded::Fresh);
        assert_eq!(small.dtype, DType::F32);
        assert!(small.reason.contains("too small") || small.reason.contains("AVX512-BF16"));
    }

    #[test]
    fn the_probe_decides_where_the_cpu_has_bf16_products() {
        let auto = auto_products(&config(), DeviceChoice::Flex, &model(512), Recorded::Fresh);
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
        let kept = auto_products(&config(), flex, &model(64), Recorded::Dtype(DType::F32));
        assert_eq!(kept.dtype, DType::F32);
        assert!(kept.reason.contains("recorded"), "{}", kept.reason);
        let bf16 = auto_products(&config(), flex, &model(64), Recorded::Dtype(DType::BF16));
        match bf16_matmul::available() {
            true => assert_eq!(bf16.dtype, DType::BF16, "{}", bf16.reason),
            false => assert_eq!(bf16.dtype, DType::F32, "{}", bf16.reason),
        }
        let before = auto_products(&config(), flex, &model(1024), Recorded::BeforeTheProbe);
        assert_eq!(
            before.dtype,
            DType::F32,
            "flex multiplied in f32 before the probe"
        );
    }
}
