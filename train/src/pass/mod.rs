//! The hand-written training pass: forward and backward of the Llama decoder with LoRA
//! adapters ([`backprop`]), built from the adapted projections ([`linear`]) and the ops with
//! their gradients ([`ops`]), and the dropout masks both directions share ([`dropout_mask`]);
//! its forward alone scores batches for evaluation ([`score`]) and, with a KV cache per row,
//! generates ([`decode`]).
//!
//! Each op picks its own path: on tensors in host memory our kernels on the tensors' buffers,
//! elsewhere Burn operations, which sit beside the kernels as their reference; the ops' unit
//! tests run both on flex, and `train/tests/backprop.rs` compares the whole pass with autodiff.

pub mod backprop;
pub mod decode;
pub mod dropout_mask;
pub mod linear;
pub mod ops;
pub mod score;
