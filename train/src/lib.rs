//! feinschliff's model side: the Llama model on Burn, Hugging Face checkpoint I/O, evaluation
//! and generation.

pub mod backend;
pub mod error;
pub mod eval;
pub mod generate;
pub mod io;
pub mod loss;
pub mod model;

pub use error::ModelError;
