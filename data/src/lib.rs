//! feinschliff's data side: everything before the model.
//!
//! - [`config`]: the `[data]` section of a run configuration,
//! - [`source`]: reading records from JSONL, JSON, Parquet and CSV files,
//! - [`tokenize`]: the model's own tokenizer (`tokenizer.json` + `tokenizer_config.json`),
//! - [`template`]: the model's own chat template, rendered with transformers' semantics,
//! - [`format`]: records to tokenized examples with their trained tokens (text, alpaca, chat),
//! - [`dataset`]: a configuration to the examples of both splits,
//! - [`prepared`]: the examples of both splits with their counts,
//! - [`cache`]: the token cache on disk,
//! - [`inspect`]: an example as text with its trained tokens marked,
//! - [`pack`]: whole examples packed into rows,
//! - [`batch`]: rows as flat arrays of ids, labels, positions and segments,
//! - [`atomic_file`]: replacing a file all at once.

pub mod atomic_file;
pub mod batch;
pub mod cache;
pub mod config;
pub mod dataset;
pub mod error;
pub mod format;
pub mod inspect;
pub mod pack;
pub mod prepared;
pub mod source;
pub mod template;
pub mod tokenize;

pub use error::Error;
