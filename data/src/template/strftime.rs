//! `strftime_now(format)` as transformers defines it for chat templates: the current local time
//! formatted like Python's `datetime.now().strftime(format)` (Llama 3.2 and 3.3 put today's date
//! into their system header this way, where no `date_string` is given).

use std::fmt::{Display, Write};

use chrono::format::StrftimeItems;
use minijinja::{Error, ErrorKind};

/// `strftime_now(format)`; a format chrono does not know is an error, not a panic.
pub(super) fn strftime_now(format: &str) -> Result<String, Error> {
    formatted(
        chrono::Local::now().format_with_items(StrftimeItems::new(format)),
        format,
    )
}

/// Writes a chrono format of `format` out, turning an unknown specifier into a template error.
fn formatted(time: impl Display, format: &str) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{time}").map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {format:?}"),
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn formats_as_python_does() {
        let time = NaiveDate::from_ymd_opt(2024, 7, 5)
            .unwrap()
            .and_hms_opt(9, 3, 7)
            .unwrap();
        // datetime(2024, 7, 5, 9, 3, 7).strftime(format) in CPython 3.11 (glibc)
        let cases = [
            ("%d %b %Y", "05 Jul 2024"),
            ("%Y-%m-%d", "2024-07-05"),
            ("%A, %B %d, %Y", "Friday, July 05, 2024"),
            ("%H:%M:%S", "09:03:07"),
            ("%-d %b %Y", "5 Jul 2024"),
            ("%j", "187"),
            ("%a %y", "Fri 24"),
            ("%I %p", "09 AM"),
            ("%e", " 5"),
        ];
        for (format, python) in cases {
            let text = formatted(time.format_with_items(StrftimeItems::new(format)), format);
            assert_eq!(text.unwrap(), python, "{format}");
        }
    }

    #[test]
    fn unknown_specifiers_are_errors() {
        let message = strftime_now("%Q").unwrap_err().to_string();
        assert!(message.contains("cannot format \"%Q\""), "{message}");
    }
}
