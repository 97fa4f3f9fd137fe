//! feinschliff's model side: what a model is and how it is read, written and run.
//!
//! - the Llama decoder on Burn ([`llama`]) with its parts: [`config`], [`rope`], the frozen
//!   [`linear`] projections and their [`lora`] adapters;
//! - files in and out ([`io`]): Hugging Face directories, PEFT adapters, GGUF;
//! - host kernels for tensors in CPU memory ([`kernels`]);
//! - running a model: [`eval`] (token loss) and [`generate`] (KV-cache decoding);
//! - the frozen base kept quantized ([`quant`], QLoRA);
//! - the compute device ([`backend`]).
//!
//! Dependencies point one way: `io`, `eval` and `generate` use the model, the model uses
//! `weights`, `json` and `kernels`, and nothing here reads training state.

pub mod backend;
pub mod batch_tensors;
pub mod config;
pub mod eval;
pub mod generate;
pub mod io;
pub(crate) mod json;
pub mod kernels;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod loss;
pub mod memory;
pub mod product;
pub mod quant;
pub mod rope;
pub mod weights;

pub use feinschliff_data::Error;
