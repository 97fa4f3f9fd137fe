//! The learning rate as a pure function of the optimizer step (0-based), with the formulas of
//! transformers' `get_{constant,linear,cosine}_schedule_with_warmup`, so a resumed run needs
//! nothing but the step.

use crate::run_config::Schedule;

/// The learning rate for optimizer step `step` of `total` steps: `peak` times the factor of
/// transformers' schedule, computed as it does (also past `total`, and with `warmup ≥ total`).
pub fn learning_rate(
    schedule: Schedule,
    peak: f64,
    warmup: usize,
    total: usize,
    step: usize,
) -> f64 {
    if step < warmup {
        return peak * (step as f64 / warmup.max(1) as f64);
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => ((total as f64 - step as f64) / decay_steps).max(0.0),
        Schedule::Cosine => {
            let progress = (step - warmup) as f64 / decay_steps;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    };
    peak * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_like_transformers() {
        let lr = |schedule, step| learning_rate(schedule, 1.0, 2, 10, step);
        assert_eq!(
            [
                lr(Schedule::Linear, 0),
                lr(Schedule::Linear, 1),
                lr(Schedule::Linear, 2)
            ],
            [0.0, 0.5, 1.0]
        );
        assert_eq!(lr(Schedule::Linear, 6), 0.5);
        assert_eq!(lr(Schedule::Linear, 10), 0.0);
        assert!((lr(Schedule::Cosine, 6) - 0.5).abs() < 1e-12);
        assert_eq!(lr(Schedule::Constant, 9), 1.0);
    }
}
