//! Where a run reports how it goes: a progress bar on a terminal, plain lines in CI.

/// The sink of a run's notes and step lines.
pub trait Progress {
    /// A message: setup, evaluation, samples, stopping.
    fn note(&mut self, line: &str);
    /// Step `done` of `total` finished; `summary` has its loss, lr, grad norm and speed.
    fn step(&mut self, done: usize, total: usize, summary: &str);
}
