//! The run configuration parser (TOML, `--set` overrides, validation) on arbitrary text: errors,
//! never panics.
#![no_main]

use feinschliff_train::run_config::RunConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // The first line, if it looks like one, is a --set override.
    let (overrides, config) = match text.split_once('\n') {
        Some((first, rest)) if first.contains('=') => (vec![first.to_owned()], rest),
        _ => (Vec::new(), text),
    };
    if let Ok(config) = RunConfig::parse(config, &overrides) {
        let _ = RunConfig::parse(&config.to_toml(), &[]).expect("a resolved config parses again");
    }
});
