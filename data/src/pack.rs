//! Packing: whole examples placed into rows of `max_len` tokens, best fit, longest first, so
//! that rows are as full as they can be without cutting an example. Attention never crosses
//! examples inside a row (see [`crate::batch`]).

use std::collections::BTreeSet;

/// Groups examples (given by their lengths, each at most `max_len`) into rows; returns the
/// example indices of each row. Deterministic: ties go to the lower index.
pub fn pack(lengths: &[usize], max_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // (free tokens, row) of every row, to find the fullest row that still fits.
    let mut free: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let len = lengths[i];
        assert!(len <= max_len, "example {i} is longer than max_len");
        match free.range((len, 0)..).next().copied() {
            Some((room, row)) => {
                free.remove(&(room, row));
                free.insert((room - len, row));
                rows[row].push(i);
            }
            None => {
                free.insert((max_len - len, rows.len()));
                rows.push(vec![i]);
            }
        }
    }
    rows
}

/// The share of row tokens that belong to examples (1 = no padding at all).
pub fn packing_efficiency(lengths: &[usize], rows: usize, max_len: usize) -> f64 {
    match rows {
        0 => 0.0,
        n => lengths.iter().sum::<usize>() as f64 / (n * max_len) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_whole_examples_best_fit() {
        let lengths = [5, 3, 8, 2, 4, 6];
        let rows = pack(&lengths, 10);
        let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5], "every example exactly once");
        for row in &rows {
            assert!(row.iter().map(|&i| lengths[i]).sum::<usize>() <= 10);
        }
        assert_eq!(rows.len(), 3, "28 tokens fit in three rows of 10: {rows:?}");
        assert!((packing_efficiency(&lengths, rows.len(), 10) - 28.0 / 30.0).abs() < 1e-12);
    }
}
