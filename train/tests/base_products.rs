//! The start-up probe on the test device (`FEINSCHLIFF_TEST_DEVICE`; CI runs it on flex and on
//! tch-cpu): both dtypes timed where the device multiplies bf16, f32 only elsewhere.

use feinschliff_model::backend::DeviceChoice;
use feinschliff_train::base_products::probe;

#[test]
fn the_probe_times_f32_and_bf16_products_on_the_test_device() {
    let name = std::env::var("FEINSCHLIFF_TEST_DEVICE").unwrap_or_else(|_| "flex".into());
    let choice: DeviceChoice = name.parse().unwrap();
    let probe = probe(choice, [64, 128, 96]);
    assert!(
        probe.f32_gflops.is_finite() && probe.f32_gflops > 0.0,
        "{probe:?}"
    );
    match choice.has_bf16_matmul() {
        true => assert!(
            probe.speedup().is_some_and(|s| s.is_finite() && s > 0.0),
            "{probe:?}"
        ),
        false => {
            assert_eq!(probe.bf16_gflops, None);
            eprintln!("{name} multiplies in f32 only on this CPU (no AVX512-BF16)");
        }
    }
}
