//! Training progress on the terminal.

use feinschliff_train::progress::Progress;

/// Training progress on stderr: a progress bar (step, loss, lr, speed, ETA) on a terminal,
/// one plain line per step otherwise (CI logs).
pub struct TerminalProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl TerminalProgress {
    /// A bar on a terminal, plain lines otherwise.
    pub fn new() -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} step {pos}/{len}  {msg}  ETA {eta}",
            )
            .expect("a valid template");
            bar.set_style(style);
            bar
        });
        Self { bar }
    }

    /// Plain lines even on a terminal (for reports that print their own summary).
    pub fn plain() -> Self {
        Self { bar: None }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

impl Progress for TerminalProgress {
    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn step(&mut self, done: usize, total: usize, summary: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(summary.to_string());
            }
            None => eprintln!("step {done}/{total}  {summary}"),
        }
    }
}
