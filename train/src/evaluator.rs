//! Evaluation during a run: the validation examples scored and the configured prompts answered
//! (greedy) with the model as it is at a step, both written to `metrics.jsonl` and the log.

use burn::module::Module;
use feinschliff_data::format::Example;
use feinschliff_model::generate::{Sampling, generate_batch};
use feinschliff_model::llama::Llama;
use serde_json::json;

use crate::Error;
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
    /// The validation examples scored (the first `train.eval_records`, 0 = all).
    valid: &'a [Example],
}

impl<'a> Evaluator<'a> {
    /// The evaluation `config` asks for, on the session's validation split.
    pub fn new(session: &'a Session, config: &'a RunConfig) -> Self {
        let valid = &session.data.data.valid;
        let keep = match config.train.eval_records {
            0 => valid.len(),
            n => n.min(valid.len()),
        };
        Self {
            session,
            config,
            valid: &valid[..keep],
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
        let loss = match self.valid.is_empty() {
            true => None,
            false => Some(self.score(&inference, step, log, progress)?),
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
