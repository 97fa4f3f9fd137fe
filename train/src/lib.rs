//! feinschliff's model side: the Llama model on Burn, Hugging Face checkpoint I/O, evaluation
//! and generation.

pub mod backend;
pub mod batch_tensors;
pub mod bench;
pub mod checkpoint;
pub mod cpu_kernels;
pub mod dropout_mask;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod host_attention;
pub mod host_matmul;
pub mod host_tensor;
pub mod io;
pub mod loss;
pub mod model;
pub mod plot;
pub mod run_config;
pub mod schedule;
pub mod train_step;
pub mod trainer;

pub use error::ModelError;
