//! Files in and out: Hugging Face model directories and their safetensors checkpoints.

pub mod hf;
pub mod json;
pub mod weights;
