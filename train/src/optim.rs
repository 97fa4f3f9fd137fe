//! The optimizer of the adapters: AdamW with PyTorch's semantics (decoupled weight decay), as
//! `[train]` configures it; `train/tests/optim.rs` replays PyTorch's on fixed gradients.

use burn::optim::AdamWConfig;

use crate::run_config::RunConfig;

/// AdamW as `[train]` configures it (betas, epsilon, explicit weight decay).
pub fn adamw(config: &RunConfig) -> AdamWConfig {
    let train_cfg = &config.train;
    AdamWConfig::new()
        .with_beta_1(train_cfg.beta1 as f32)
        .with_beta_2(train_cfg.beta2 as f32)
        .with_epsilon(train_cfg.eps as f32)
        .with_weight_decay(train_cfg.weight_decay as f32)
}
