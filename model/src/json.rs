//! JSON parsing whose errors say which key is wrong.

use serde::de::DeserializeOwned;

/// Parses `text`; a type error names the key path (``key `rope_scaling.factor`: ...``), a
/// syntax error says the JSON is invalid and where.
pub(crate) fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." || path == "?" {
            format!("invalid JSON: {inner}")
        } else {
            format!("key `{path}`: {inner}")
        }
    })?;
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(value)
}
