//! One module per subcommand: its arguments and a `run` that calls the libraries and prints.

pub mod bench;
pub mod eval;
pub mod export;
pub mod generate;
pub mod import_gguf;
pub mod inspect;
pub mod model_args;
pub mod progress;
pub mod train;
