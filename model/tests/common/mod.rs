//! What the integration tests share.

use burn::tensor::Device;
use feinschliff_model::backend::DeviceChoice;
use feinschliff_model::generate::{Decoder, Sampling, generate, generate_batch};

/// The device the model tests run on: `FEINSCHLIFF_TEST_DEVICE` (a `--device` name such as
/// `tch-cpu` in a `--features tch` build), else flex.
pub fn test_device() -> Device {
    let name = std::env::var("FEINSCHLIFF_TEST_DEVICE").unwrap_or_else(|_| "flex".into());
    let choice: DeviceChoice = name
        .parse()
        .unwrap_or_else(|e| panic!("FEINSCHLIFF_TEST_DEVICE: {e}"));
    choice.device()
}

/// Asserts that three prompts of different lengths generated together (rows leaving the batch
/// as they end) give each prompt the tokens it gets alone, greedy and sampled, with one row
/// ending early at an EOS id, and that `on_token` sees exactly those tokens; `decoder` makes a
/// fresh decoder of the model under test.
#[allow(
    dead_code,
    reason = "used by some of the test files that share this module"
)]
pub fn assert_batched_generation_equals_alone<'a>(
    what: &str,
    decoder: impl Fn() -> Box<dyn Decoder + 'a>,
) {
    let prompts = vec![
        vec![5u32, 17, 42, 8, 66, 23, 13],
        vec![51, 22],
        vec![25, 83, 49, 7],
    ];
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let sampled = Sampling {
        temperature: 0.9,
        top_p: 0.9,
        seed: 7,
    };
    for sampling in [greedy, sampled] {
        let alone = |prompt: &[u32], eos: &[u32]| {
            generate(decoder().as_mut(), prompt, eos, 12, sampling, |_| Ok(())).unwrap()
        };
        // An EOS id that ends the first prompt's row after its fourth token.
        let eos = [alone(&prompts[0], &[])[3]];
        let expected: Vec<Vec<u32>> = prompts.iter().map(|p| alone(p, &eos)).collect();
        assert!(
            expected[0].len() <= 4,
            "{what}: the EOS row did not end early"
        );
        let mut seen = vec![Vec::new(); prompts.len()];
        let batched = generate_batch(
            decoder().as_mut(),
            &prompts,
            &eos,
            12,
            sampling,
            |row, id| {
                seen[row].push(id);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(batched, expected, "{what}, {sampling:?}");
        assert_eq!(seen, expected, "{what}: on_token saw other tokens");
    }
}
