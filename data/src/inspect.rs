//! Showing an example as text with its trained tokens marked, for `feinschliff data inspect`.

use crate::Error;
use crate::format::Example;
use crate::tokenize::TextTokenizer;

/// How trained text is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marking {
    /// `[[trained]]`, for logs and pipes.
    Brackets,
    /// Green on a terminal.
    Colour,
}

/// The example's text (special tokens included) with every run of trained tokens marked.
pub fn highlight(
    example: &Example,
    tokenizer: &TextTokenizer,
    marking: Marking,
) -> Result<String, Error> {
    let (open, close) = match marking {
        Marking::Brackets => ("[[", "]]"),
        Marking::Colour => ("\x1b[1;32m", "\x1b[0m"),
    };
    // Runs are cut out of the decoded prefixes, so a character split across two runs of
    // byte-level tokens still comes out whole.
    let mut out = String::new();
    let mut decoded = String::new();
    let mut start = 0;
    while start < example.ids.len() {
        let trained = example.trained[start] && start > 0;
        let mut end = start + 1;
        while end < example.ids.len() && (example.trained[end] && end > 0) == trained {
            end += 1;
        }
        let prefix = tokenizer.decode(&example.ids[..end], false)?;
        let run = match prefix.strip_prefix(decoded.as_str()) {
            Some(run) => run.to_owned(),
            None => tokenizer.decode(&example.ids[start..end], false)?,
        };
        match trained {
            true => out.push_str(&format!("{open}{run}{close}")),
            false => out.push_str(&run),
        }
        decoded = prefix;
        start = end;
    }
    Ok(out)
}
