//! feinschliff's training side. Models, their files and kernels come from `feinschliff-model`.
//!
//! - [`run_config`]: the TOML run configuration;
//! - [`trainer`]: a run as a recipe, from [`run_dir`] (locked first), [`resume`] (where to
//!   start), [`session`] (model, tokenizer, data, and with [`base_products`] the dtype the
//!   frozen base multiplies in) and [`stream`] (the rows of each step) to
//!   [`evaluator`] and [`checkpoint`];
//! - [`train_step`]: one optimizer step through the hand-written training [`pass`], with
//!   [`optim`] (AdamW) and [`schedule`] (the learning rate);
//! - [`bench`]: training speed on the same session as a run;
//! - [`plot`], [`progress`], [`export`]: what a run shows and hands on.

pub mod base_products;
pub mod bench;
pub mod checkpoint;
pub mod dpo;
pub mod evaluator;
pub mod export;
pub mod export_gguf;
pub mod optim;
pub mod packed_eval;
pub mod pass;
pub mod plot;
pub mod progress;
pub mod resume;
pub mod run_config;
pub mod run_dir;
pub mod schedule;
pub mod session;
pub mod stream;
pub mod train_step;
pub mod trainer;

pub use feinschliff_data::Error;
