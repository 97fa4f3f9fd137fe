//! feinschliff's data side: everything before the model.
//!
//! - [`source`]: reading records from data files,
//! - [`tokenize`]: the model's own tokenizer (`tokenizer.json` + `tokenizer_config.json`),
//! - [`template`]: the model's own chat template, rendered with transformers' semantics.

pub mod error;
pub mod source;
pub mod template;
pub mod tokenize;

pub use error::DataError;
