//! The Llama model: configuration, rotary embedding and the decoder itself.

pub mod backprop;
pub mod config;
pub mod llama;
pub mod lora;
pub mod rope;
