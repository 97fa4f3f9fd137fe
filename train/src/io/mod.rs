//! Files in and out: Hugging Face model directories, their safetensors checkpoints, and GGUF
//! files.

pub mod dequant;
pub mod gguf;
pub mod gguf_import;
pub mod gguf_tokenizer;
pub mod hf;
pub mod hf_export;
pub mod json;
pub mod new_dir;
pub mod peft;
pub mod safetensors_out;
pub mod weights;
