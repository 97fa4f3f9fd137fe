//! The error type of the model crate: every variant names the file, key or tensor at fault.

use std::path::PathBuf;

use feinschliff_data::DataError;

/// An error while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// A file was read but its content is wrong.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or tensor.
        message: String,
    },
    /// A request that the model cannot serve (bad token ids, too long a context, ...).
    #[error("{0}")]
    Usage(String),
    /// An error from the data side (tokenizer, template, records).
    #[error(transparent)]
    Data(#[from] DataError),
}

impl ModelError {
    /// A [`ModelError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause,
        }
    }
}
