//! Files in and out: Hugging Face model directories and their safetensors checkpoints, PEFT
//! adapter directories, and GGUF files.

pub mod gguf;
pub mod hf;
pub mod hf_export;
pub mod new_dir;
pub mod peft;
pub mod safetensors_out;
