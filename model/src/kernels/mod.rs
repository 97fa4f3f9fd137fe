//! Kernels for tensors in host memory (flex, and LibTorch's CPU): plain `f32` views of Burn
//! tensors ([`host_tensor`]), fused element-wise kernels ([`cpu`]), matrix products through
//! `gemm` ([`matmul`]), products with a quantized weight dequantized a tile at a time
//! ([`quant_matmul`]), causal attention ([`attention`]) and attention against a KV cache for
//! generation ([`cached_attention`]). On other devices callers use Burn operations.

pub mod attention;
pub mod bf16_matmul;
pub mod bf16_probe;
pub mod cached_attention;
pub mod cpu;
pub mod host_tensor;
pub mod matmul;
pub mod quant_matmul;
