//! The Llama model: configuration, rotary embedding and the decoder itself.

pub mod config;
pub mod llama;
pub mod lora;
pub mod rope;
