//! The `tojson` filter as transformers defines it for chat templates: Python's `json.dumps` with
//! its keyword arguments `ensure_ascii` (default off), `indent`, `separators` and `sort_keys`,
//! instead of minijinja's own `tojson` (compact, HTML-escaping). Maps keep their order (minijinja's
//! `preserve_order`), as Python's dicts do.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `value | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.to_string()),
        Some(v) => Some(" ".repeat(usize::try_from(i64::try_from(v)?.max(0)).unwrap_or(0))),
    };
    let (item_separator, key_separator) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([item, key]) => (item, key),
            Err(_) => return Err(invalid("tojson: separators must be a pair of strings")),
        },
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut dumper = Dumper {
        indent,
        item_separator,
        key_separator,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        out: String::new(),
    };
    kwargs.assert_all_used()?;
    dumper.value(value, 0)?;
    Ok(dumper.out)
}

/// `json.dumps`' settings and its output so far.
struct Dumper {
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
    ensure_ascii: bool,
    out: String,
}

impl Dumper {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.out.push_str(&number(value)?),
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), &items, depth, |d, item, depth| {
                    d.value(item, depth)
                })?;
            }
            ValueKind::Map => self.map(value, depth)?,
            kind => {
                return Err(invalid(format!(
                    "tojson: a {kind} is not JSON serializable"
                )));
            }
        }
        Ok(())
    }

    fn map(&mut self, map: &Value, depth: usize) -> Result<(), Error> {
        let mut entries = Vec::new();
        for key in map.try_iter()? {
            let item = map.get_item(&key)?;
            entries.push((key_text(&key)?, item));
        }
        if self.sort_keys {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        self.container(('{', '}'), &entries, depth, |d, (key, item), depth| {
            d.string(key);
            d.out.push_str(&d.key_separator.clone());
            d.value(item, depth)
        })
    }

    /// Writes `items` between `brackets`, one per line where there is an indent.
    fn container<T>(
        &mut self,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        mut write: impl FnMut(&mut Self, &T, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if items.is_empty() {
            self.out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(&self.item_separator.clone());
            }
            self.newline(depth + 1);
            write(self, item, depth + 1)?;
        }
        self.newline(depth);
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            self.out.push_str(&indent.repeat(depth));
        }
    }

    /// A JSON string as Python writes it: the same escapes as serde_json's, and with
    /// `ensure_ascii` every non-ASCII character as `\uXXXX` (UTF-16, lowercase hex).
    fn string(&mut self, text: &str) {
        let quoted = serde_json::to_string(text).expect("a string serializes");
        if !self.ensure_ascii {
            self.out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                self.out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    self.out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

/// A map key as Python's `json.dumps` converts it to a string.
fn key_text(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => number(key),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        kind => Err(invalid(format!("tojson: keys must be strings, not {kind}"))),
    }
}

/// An integer as is; a float as Python's `repr`, which `json.dumps` uses.
fn number(value: &Value) -> Result<String, Error> {
    if value.is_integer() {
        return Ok(value.to_string());
    }
    Ok(python_float(f64::try_from(value.clone())?))
}

/// Python's `float.__repr__`: the shortest round-trip digits, positional for decimal exponents
/// -4 to 15 (always with a fraction), else `<digits>e<sign><two or more digits>`.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} has an integer exponent");
    if (-4..16).contains(&exponent) {
        let positional = format!("{x}");
        return match positional.contains('.') {
            true => positional,
            false => positional + ".0",
        };
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_transformers_tojson_writes() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        let source = r#"{{ value | tojson }}|{{ value | tojson(ensure_ascii=True) }}|{{ value | tojson(sort_keys=True, separators=[',', ':']) }}|{{ value | tojson(indent='\t') }}|{{ [] | tojson(indent=2) }}"#;
        let value: Value =
            serde_json::from_str(r#"{"b": [1, {}, null, true, 2.5], "a": "ä😀\n\"<>&"}"#).unwrap();
        let text = env
            .render_str(source, minijinja::context! { value })
            .unwrap();
        // transformers' render_jinja_template of the same source and value
        let python = [
            r#"{"b": [1, {}, null, true, 2.5], "a": "ä😀\n\"<>&"}"#,
            r#"{"b": [1, {}, null, true, 2.5], "a": "\u00e4\ud83d\ude00\n\"<>&"}"#,
            r#"{"a":"ä😀\n\"<>&","b":[1,{},null,true,2.5]}"#,
            "{\n\t\"b\": [\n\t\t1,\n\t\t{},\n\t\tnull,\n\t\ttrue,\n\t\t2.5\n\t],\n\t\"a\": \"ä😀\\n\\\"<>&\"\n}",
            "[]",
        ];
        assert_eq!(text, python.join("|"));
    }

    #[test]
    fn what_json_cannot_hold_is_an_error() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        for source in [
            "{{ undefined_name | tojson }}",
            "{{ 1 | tojson(indent=2, colour=1) }}",
        ] {
            assert!(env.render_str(source, ()).is_err(), "{source}");
        }
    }

    #[test]
    fn floats_as_python_writes_them() {
        // repr() of each in CPython 3.11
        let cases = [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (2.5e-300, "2.5e-300"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, python) in cases {
            assert_eq!(python_float(x), python, "{x}");
        }
    }
}
