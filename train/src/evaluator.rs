//! Evaluation during a run: the validation examples scored and the configured prompts answered
//! (greedy) with the model as it is at a step, both written to `metrics.jsonl` and the log.

use burn::module::Module;
use feinschliff_data::format::Example;
use feinschliff_model::generate::{Sampling, generate_batch};
use feinschliff_model::llama::Llama;
use serde_json::json;

use crate::Error;
use crate::dpo::loss::PreferenceMetrics;
use crate::dpo::pass::pair_terms;
use crate::dpo::reference::{References, log_probs};
use crate::packed_eval::evaluate_packed;
use crate::pass::decode::decoder;
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::run_dir::MetricsLog;
use crate::session::Session;

/// What a run evaluates, and with what.
pub struct Evaluator<'a> {
    session: &'a Session,
    config: &'a RunConfig,
    /// The validation examples scored (the first `train.eval_records`, 0 = all; pairs for
    /// preference data).
    valid: &'a [Example],
    /// The reference's log-probabilities of the validation examples, for DPO.
    references: Option<&'a [f64]>,
}

impl<'a> Evaluator<'a> {
    /// The evaluation `config` asks for, on the session's validation split.
    pub fn new(
        session: &'a Session,
        config: &'a RunConfig,
        references: Option<&'a References>,
    ) -> Self {
        let valid = &session.data.data.valid;
        let per_record = if references.is_some() { 2 } else { 1 };
        let keep = match config.train.eval_records {
            0 => valid.len(),
            n => (n * per_record).min(valid.len()),
        };
        Self {
            session,
            config,
            valid: &valid[..keep],
            references: references.map(|r| &r.valid[..keep]),
        }
    }

    /// Whether there is anything to evaluate (validation data or sample prompts).
    pub fn wanted(&self) -> bool {
        !self.valid.is_empty() || !self.config.train.generate_prompts.is_empty()
    }

    /// Evaluates `model` at `step`; returns the validation loss, if there is validation data.
    pub fn run(
        &self,
        model: &Llama,
        step: usize,
        log: &mut MetricsLog,
        progress: &mut dyn Progress,
    ) -> Result<Option<f64>, Error> {
        let inference = model.valid();
        let loss = match (self.valid.is_empty(), self.references) {
            (true, _) => None,
            (false, None) => Some(self.score(&inference, step, log, progress)?),
            (false, Some(references)) => {
                Some(self.score_pairs(&inference, references, step, log, progress)?)
            }
        };
        self.answer_prompts(&inference, step, log, progress)?;
        Ok(loss)
    }

    /// Scores the validation examples; returns the mean token loss.
    fn score(
        &self,
        model: &Llama,
        step: usize,
        log: &mut MetricsLog,
        progress: &mut dyn Progress,
    ) -> Result<f64, Error> {
        let batch_tokens = self.config.train.micro_batch * self.config.data.max_len;
        let pad_id = self.session.tokenizer.pad_id();
        let device = &self.session.plain_device;
        let report = evaluate_packed(
            model,
            self.valid,
            batch_tokens,
            pad_id,
            device,
            |_, _, _| {},
        );
        log.write(json!({
            "step": step, "eval_loss": report.loss, "eval_perplexity": report.perplexity
        }))?;
        progress.note(&format!(
            "eval at step {step}: loss {:.4}  perplexity {:.3}",
            report.loss, report.perplexity
        ));
        Ok(report.loss)
    }

    /// Scores the validation pairs with the DPO objective; returns the mean pair loss.
    fn score_pairs(
        &self,
        model: &Llama,
        references: &[f64],
        step: usize,
        log: &mut MetricsLog,
        progress: &mut dyn Progress,
    ) -> Result<f64, Error> {
        let dpo = self.config.train.dpo().expect("references exist for DPO");
        let rows = 2 * self.config.train.micro_batch;
        let pad_id = self.session.tokenizer.pad_id();
        let device = &self.session.plain_device;
        let policy = log_probs(model, self.valid, rows, pad_id, device);
        let scored: Vec<usize> = self.valid.iter().map(Example::trained_tokens).collect();
        let mut metrics = PreferenceMetrics::default();
        for terms in pair_terms(&policy, references, &scored, dpo) {
            metrics.add(&terms);
        }
        let mut line = json!({ "step": step, "eval_loss": metrics.loss });
        metrics.write_into(&mut line, "eval_");
        log.write(line)?;
        progress.note(&format!(
            "eval at step {step}: DPO loss {:.4}  reward accuracy {:.3}  margin {:.4}",
            metrics.loss, metrics.reward_accuracy, metrics.reward_margin
        ));
        Ok(metrics.loss)
    }

    /// Answers every configured prompt greedily, all in one batch.
    fn answer_prompts(
        &self,
        model: &Llama,
        step: usize,
        log: &mut MetricsLog,
        progress: &mut dyn Progress,
    ) -> Result<(), Error> {
        let greedy = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        };
        let (tokenizer, device) = (&self.session.tokenizer, &self.session.plain_device);
        let max_new = self.config.train.generate_max_new_tokens;
        let prompts = &self.config.train.generate_prompts;
        let ids = prompts
            .iter()
            .map(|p| tokenizer.encode(p, true))
            .collect::<Result<Vec<_>, _>>()?;
        let eos = &self.session.eos_ids;
        let mut decoder = decoder(model, device);
        let answers = generate_batch(decoder.as_mut(), &ids, eos, max_new, greedy, |_, _| Ok(()))?;
        for (prompt, new) in prompts.iter().zip(&answers) {
            let text = tokenizer.decode(new, true)?;
            log.write(json!({ "step": step, "prompt": prompt, "generation": text }))?;
            progress.note(&format!("sample at step {step}: {prompt:?} -> {text:?}"));
        }
        Ok(())
    }
}
