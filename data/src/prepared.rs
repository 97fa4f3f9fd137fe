//! What preparing a data set gives: the tokenized examples of both splits and their counts,
//! whether they were just built or read back from the token cache.

use serde::{Deserialize, Serialize};

use crate::format::Example;

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Records read.
    pub records: usize,
    /// Examples made (a long text can give several windows).
    pub examples: usize,
    /// Tokens in all examples.
    pub tokens: usize,
    /// Tokens that are trained (scored).
    pub trained_tokens: usize,
    /// Records longer than `max_len` that were cut or windowed.
    pub truncated: usize,
    /// Records left out (too long with `overlong = "drop"`, or nothing left to train).
    pub dropped: usize,
}

/// Tokenized examples of both splits with their counts.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Training examples, in record order.
    pub train: Vec<Example>,
    /// Validation examples, in record order.
    pub valid: Vec<Example>,
    /// Counts of the training split.
    pub train_stats: SplitStats,
    /// Counts of the validation split.
    pub valid_stats: SplitStats,
}
