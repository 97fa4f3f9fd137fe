//! Batches for the model: rows of examples as flat id, label, position and segment arrays.
//!
//! A row holds one example (padded batches) or several (packed rows). Positions restart at 0
//! for every example, and each example is its own segment: the model lets a token attend only
//! to earlier tokens of its own segment. Padding at the end of a row is one more segment, with
//! the label `-100` everywhere, so it is never trained and never seen by real tokens; it is
//! found by position, never by comparing ids with EOS. A label is the token's id where the
//! example trains it, else `-100`; the first token of an example is never a label, so no
//! example is ever predicted from the one before it.

use crate::format::Example;

/// The label of a token that is not trained (transformers' `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// A batch of `rows` rows of `len` tokens, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids (padding: `pad_id`).
    pub ids: Vec<i64>,
    /// Labels: the id where trained, else [`IGNORE_INDEX`].
    pub labels: Vec<i64>,
    /// Position of each token within its example.
    pub positions: Vec<i64>,
    /// Segment (example) number of each token within its row.
    pub segments: Vec<i64>,
    /// Number of rows.
    pub rows: usize,
    /// Tokens per row.
    pub len: usize,
    /// Labels that are not [`IGNORE_INDEX`].
    pub trained_tokens: usize,
    /// Tokens that are not padding.
    pub real_tokens: usize,
}

/// Lays out `rows` (each a list of examples) into a batch of rows of `pad_to` tokens (which
/// must hold the longest row), or as long as the longest row when `pad_to` is `None`.
pub fn make_batch(rows: &[Vec<&Example>], pad_to: Option<usize>, pad_id: u32) -> Batch {
    let longest = rows
        .iter()
        .map(|row| row.iter().map(|e| e.ids.len()).sum::<usize>())
        .max()
        .unwrap_or(0);
    let len = pad_to.unwrap_or(longest);
    let size = rows.len() * len;
    let mut batch = Batch {
        ids: Vec::with_capacity(size),
        labels: Vec::with_capacity(size),
        positions: Vec::with_capacity(size),
        segments: Vec::with_capacity(size),
        rows: rows.len(),
        len,
        trained_tokens: 0,
        real_tokens: 0,
    };
    for row in rows {
        let mut used = 0;
        for (segment, example) in row.iter().enumerate() {
            for (position, (&id, &trained)) in example.ids.iter().zip(&example.trained).enumerate()
            {
                let scored = trained && position > 0;
                batch.ids.push(i64::from(id));
                batch
                    .labels
                    .push(if scored { i64::from(id) } else { IGNORE_INDEX });
                batch.positions.push(position as i64);
                batch.segments.push(segment as i64);
                batch.trained_tokens += usize::from(scored);
            }
            used += example.ids.len();
        }
        assert!(used <= len, "a row of {used} tokens does not fit in {len}");
        batch.real_tokens += used;
        for position in 0..len - used {
            batch.ids.push(i64::from(pad_id));
            batch.labels.push(IGNORE_INDEX);
            batch.positions.push(position as i64);
            batch.segments.push(row.len() as i64);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_row_restarts_positions_and_never_labels_a_first_token() {
        let a = Example {
            ids: vec![10, 11, 12],
            trained: vec![false, true, true],
        };
        let b = Example {
            ids: vec![20, 21],
            trained: vec![true, true],
        };
        let batch = make_batch(&[vec![&a, &b], vec![&b]], Some(6), 0);
        assert_eq!(batch.ids, [10, 11, 12, 20, 21, 0, 20, 21, 0, 0, 0, 0]);
        assert_eq!(
            batch.labels,
            [
                -100, 11, 12, -100, 21, -100, -100, 21, -100, -100, -100, -100
            ]
        );
        assert_eq!(batch.positions, [0, 1, 2, 0, 1, 0, 0, 1, 0, 1, 2, 3]);
        assert_eq!(batch.segments, [0, 0, 0, 1, 1, 2, 0, 0, 1, 1, 1, 1]);
        assert_eq!((batch.trained_tokens, batch.real_tokens), (4, 7));
    }
}
