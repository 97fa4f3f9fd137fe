//! The one error type of feinschliff's crates (data, model, training): each variant says what
//! failed and names the file, line, record, key, tensor or checkpoint at fault, so every
//! message is one line a user can act on.

use std::path::PathBuf;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
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
        /// What is wrong, naming the key or tensor where there is one.
        message: String,
    },
    /// One line of a line-oriented file is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with that line.
        message: String,
    },
    /// One record of a data file is wrong.
    #[error("{origin}: {message}")]
    Record {
        /// The file and line or record number.
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A configuration key has a value that cannot work.
    #[error("key `{key}`: {message}")]
    Config {
        /// The key, with its section (`train.lr`).
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// A tensor of a weights file is missing, misplaced or of the wrong shape or dtype.
    #[error("{}: tensor `{name}` {message}", path.display())]
    Tensor {
        /// The file that has (or should have) the tensor.
        path: PathBuf,
        /// The tensor's name in its file.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint directory is incomplete, damaged or cannot be written.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file of the checkpoint at fault (its manifest, state or a listed file).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Text that does not parse (a TOML configuration, a `--set` override), with the
    /// parser's position.
    #[error("{0}")]
    Parse(String),
    /// Tokenizing or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Rendering a chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// A request that cannot be served (bad arguments, token ids, too long a context, ...).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An [`Error::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause,
        }
    }

    /// An [`Error::Config`] for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Tensor`]: tensor `name` of `path`, then what is wrong (`is missing`).
    pub fn tensor(path: impl Into<PathBuf>, name: &str, message: impl Into<String>) -> Self {
        Self::Tensor {
            path: path.into(),
            name: name.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Checkpoint`]: `path` in a checkpoint, then what is wrong with it.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    /// This error as it reads inside a file's message: an [`Error::Invalid`] of `path` whose
    /// message is this error's text (`path: key `train.lr`: must be positive`).
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        Self::invalid(path, self.to_string())
    }
}
