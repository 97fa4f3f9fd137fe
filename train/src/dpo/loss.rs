//! The DPO objective on summed log-probabilities, as TRL's `DPOTrainer` (1.16) defines it:
//! per pair the policy's and the reference's log-probabilities of the chosen and the rejected
//! answer (sums over the answer's tokens), the loss, its derivatives with respect to the
//! policy's two sums, and the implicit rewards `β · (policy − reference)`.
//!
//! - `sigmoid` (the DPO paper): `−log σ(β · Δ)` with `Δ = (π_c − ρ_c) − (π_r − ρ_r)`.
//! - `ipo`: `(Δ' − 1 / (2β))²` with `Δ'` the same difference of per-token means (each sum
//!   divided by its answer's token count).

use serde::{Deserialize, Serialize};

/// The loss of a pair.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// `−log σ(β Δ)`.
    #[default]
    Sigmoid,
    /// `(Δ' − 1/(2β))²` on per-token means.
    Ipo,
}

/// The objective's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoSettings {
    /// `β`, the strength of the pull towards the reference.
    pub beta: f64,
    /// Which loss.
    pub loss: DpoLoss,
}

/// One pair's log-probabilities: sums over the answer's scored tokens, and their counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogProbs {
    /// The policy's `log p(chosen)`.
    pub chosen: f64,
    /// The policy's `log p(rejected)`.
    pub rejected: f64,
    /// The reference's `log p(chosen)`.
    pub reference_chosen: f64,
    /// The reference's `log p(rejected)`.
    pub reference_rejected: f64,
    /// Scored tokens of the chosen answer.
    pub chosen_tokens: usize,
    /// Scored tokens of the rejected answer.
    pub rejected_tokens: usize,
}

/// One pair's loss, its derivatives and rewards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairTerms {
    /// The loss.
    pub loss: f64,
    /// `∂ loss / ∂ log p(chosen)` of the policy.
    pub d_chosen: f64,
    /// `∂ loss / ∂ log p(rejected)` of the policy.
    pub d_rejected: f64,
    /// `β · (π_c − ρ_c)`.
    pub reward_chosen: f64,
    /// `β · (π_r − ρ_r)`.
    pub reward_rejected: f64,
}

impl DpoSettings {
    /// The terms of one pair.
    pub fn pair(&self, p: &PairLogProbs) -> PairTerms {
        let beta = self.beta;
        let chosen_ratio = p.chosen - p.reference_chosen;
        let rejected_ratio = p.rejected - p.reference_rejected;
        let (loss, d_chosen, d_rejected) = match self.loss {
            DpoLoss::Sigmoid => {
                let z = beta * (chosen_ratio - rejected_ratio);
                // −log σ(z) = softplus(−z); its derivative in z is −σ(−z).
                let d = -beta * sigmoid(-z);
                (softplus(-z), d, -d)
            }
            DpoLoss::Ipo => {
                let (n_c, n_r) = (
                    p.chosen_tokens.max(1) as f64,
                    p.rejected_tokens.max(1) as f64,
                );
                let gap = chosen_ratio / n_c - rejected_ratio / n_r - 1.0 / (2.0 * beta);
                (gap * gap, 2.0 * gap / n_c, -2.0 * gap / n_r)
            }
        };
        PairTerms {
            loss,
            d_chosen,
            d_rejected,
            reward_chosen: beta * chosen_ratio,
            reward_rejected: beta * rejected_ratio,
        }
    }
}

/// Means of the pairs' terms over a step or an evaluation: what `metrics.jsonl` records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PreferenceMetrics {
    /// Pairs counted.
    pub pairs: usize,
    /// Mean loss.
    pub loss: f64,
    /// Mean reward of the chosen answers.
    pub rewards_chosen: f64,
    /// Mean reward of the rejected answers.
    pub rewards_rejected: f64,
    /// Mean of `reward_chosen − reward_rejected`.
    pub reward_margin: f64,
    /// Share of pairs whose chosen reward is strictly higher.
    pub reward_accuracy: f64,
}

impl PreferenceMetrics {
    /// Adds one pair's terms.
    pub fn add(&mut self, terms: &PairTerms) {
        let margin = terms.reward_chosen - terms.reward_rejected;
        let one = Self {
            pairs: 1,
            loss: terms.loss,
            rewards_chosen: terms.reward_chosen,
            rewards_rejected: terms.reward_rejected,
            reward_margin: margin,
            reward_accuracy: f64::from(u8::from(terms.reward_chosen > terms.reward_rejected)),
        };
        *self = self.merge(&one);
    }

    /// Adds the means to a `metrics.jsonl` line, each key prefixed with `prefix`.
    pub fn write_into(&self, line: &mut serde_json::Value, prefix: &str) {
        for (key, value) in [
            ("rewards_chosen", self.rewards_chosen),
            ("rewards_rejected", self.rewards_rejected),
            ("reward_margin", self.reward_margin),
            ("reward_accuracy", self.reward_accuracy),
        ] {
            line[format!("{prefix}{key}")] = serde_json::json!(value);
        }
    }

    /// Both sets of pairs together.
    pub fn merge(mut self, other: &Self) -> Self {
        let total = (self.pairs + other.pairs).max(1) as f64;
        let (a, b) = (self.pairs as f64 / total, other.pairs as f64 / total);
        let mix = |x: f64, y: f64| a * x + b * y;
        self.loss = mix(self.loss, other.loss);
        self.rewards_chosen = mix(self.rewards_chosen, other.rewards_chosen);
        self.rewards_rejected = mix(self.rewards_rejected, other.rewards_rejected);
        self.reward_margin = mix(self.reward_margin, other.reward_margin);
        self.reward_accuracy = mix(self.reward_accuracy, other.reward_accuracy);
        self.pairs += other.pairs;
        self
    }
}

/// `1 / (1 + e⁻ˣ)` without overflow.
fn sigmoid(x: f64) -> f64 {
    match x >= 0.0 {
        true => 1.0 / (1.0 + (-x).exp()),
        false => x.exp() / (1.0 + x.exp()),
    }
}

/// `log(1 + eˣ)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> PairLogProbs {
        PairLogProbs {
            chosen: -12.5,
            rejected: -20.25,
            reference_chosen: -14.0,
            reference_rejected: -19.0,
            chosen_tokens: 5,
            rejected_tokens: 8,
        }
    }

    /// The derivatives against central differences of the loss, for both losses.
    #[test]
    fn derivatives_are_the_slopes_of_the_loss() {
        for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo] {
            let settings = DpoSettings { beta: 0.3, loss };
            let terms = settings.pair(&pair());
            let h = 1e-5;
            let at = |dc: f64, dr: f64| {
                let mut p = pair();
                p.chosen += dc;
                p.rejected += dr;
                settings.pair(&p).loss
            };
            let slope_c = (at(h, 0.0) - at(-h, 0.0)) / (2.0 * h);
            let slope_r = (at(0.0, h) - at(0.0, -h)) / (2.0 * h);
            assert!((slope_c - terms.d_chosen).abs() < 1e-7, "{loss:?}");
            assert!((slope_r - terms.d_rejected).abs() < 1e-7, "{loss:?}");
        }
    }

    #[test]
    fn the_sigmoid_loss_is_log_two_when_the_policy_is_the_reference() {
        let mut p = pair();
        (p.chosen, p.rejected) = (p.reference_chosen, p.reference_rejected);
        let settings = DpoSettings {
            beta: 0.1,
            loss: DpoLoss::Sigmoid,
        };
        let terms = settings.pair(&p);
        assert!((terms.loss - 2f64.ln()).abs() < 1e-15);
        assert_eq!((terms.reward_chosen, terms.reward_rejected), (0.0, 0.0));
        // Far from the reference the loss stays finite.
        p.chosen = 1e6;
        assert!(settings.pair(&p).loss.is_finite());
    }

    #[test]
    fn metrics_are_means_and_merge_by_pair_count() {
        let settings = DpoSettings {
            beta: 0.1,
            loss: DpoLoss::Sigmoid,
        };
        let mut flipped = pair();
        flipped.chosen = -30.0;
        let terms = [pair(), flipped, pair()].map(|p| settings.pair(&p));
        let (mut first, mut rest, mut all) = Default::default();
        PreferenceMetrics::add(&mut first, &terms[0]);
        for t in &terms {
            PreferenceMetrics::add(&mut all, t);
        }
        for t in &terms[1..] {
            PreferenceMetrics::add(&mut rest, t);
        }
        let merged = first.merge(&rest);
        assert_eq!(merged.pairs, 3);
        assert!((merged.reward_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((merged.reward_margin - all.reward_margin).abs() < 1e-12);
        assert!((merged.loss - all.loss).abs() < 1e-12);
    }
}
