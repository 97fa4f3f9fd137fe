//! From a `[data]` configuration to training and validation examples: the files are read, the
//! validation share split off by hash, every record turned into examples (in parallel), and the
//! result kept in the token cache for the next run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::cache::{CacheEntry, cache_key};
use crate::config::DataConfig;
use crate::format::{Built, Example, ExampleBuilder};
use crate::prepared::{Prepared, SplitStats};
use crate::source::{Record, expand_patterns, read_records};
use crate::tokenize::TextTokenizer;

/// Prepared examples and how they were obtained.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The examples.
    pub data: Prepared,
    /// The cache file they came from or went to (none without a cache).
    pub cache_file: Option<PathBuf>,
    /// True when the cache had them and nothing was tokenized.
    pub from_cache: bool,
    /// Seconds spent reading, tokenizing or loading.
    pub seconds: f64,
}

/// Prepares the examples of `config` with the tokenizer (and chat template) of the model in
/// `model_dir`, through the token cache when `config.cache_dir` is set.
pub fn load_dataset(config: &DataConfig, model_dir: &Path) -> Result<Loaded, Error> {
    let started = Instant::now();
    let train_files = expand_patterns(&config.train.0)?;
    let valid_files = expand_patterns(&config.valid.0)?;
    let entry = match config.cache_dir.is_empty() {
        true => None,
        false => {
            let key = cache_key(
                &train_files,
                &valid_files,
                model_dir,
                &shaping_options(config),
            )?;
            Some(CacheEntry::new(Path::new(&config.cache_dir), &key))
        }
    };
    if let Some(data) = entry.as_ref().and_then(CacheEntry::load) {
        return Ok(Loaded {
            data,
            cache_file: entry.map(|e| e.examples),
            from_cache: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let tokenizer = TextTokenizer::from_model_dir(model_dir)?;
    let builder = ExampleBuilder::new(config, &tokenizer)?;
    let mut train_records = read_records(&train_files)?;
    let mut valid_records = read_records(&valid_files)?;
    if config.valid_fraction > 0.0 {
        let mut kept = Vec::with_capacity(train_records.len());
        for record in train_records {
            match is_held_out(&record, &config.split_key, config.valid_fraction)? {
                true => valid_records.push(record),
                false => kept.push(record),
            }
        }
        train_records = kept;
    }
    let (train, train_stats) = build_split(&builder, &train_records)?;
    if train.is_empty() {
        return Err(empty_split("train", &config.train.0, &train_stats));
    }
    let (valid, valid_stats) = build_split(&builder, &valid_records)?;
    let wants_valid = !config.valid.0.is_empty() || config.valid_fraction > 0.0;
    if wants_valid && valid.is_empty() {
        return Err(empty_split("valid", &config.valid.0, &valid_stats));
    }
    let data = Prepared {
        train,
        valid,
        train_stats,
        valid_stats,
    };
    if let Some(entry) = &entry {
        entry.store(&data)?;
    }
    Ok(Loaded {
        data,
        cache_file: entry.map(|e| e.examples),
        from_cache: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The options that shape the examples (everything but how they are batched and cached).
fn shaping_options(config: &DataConfig) -> serde_json::Value {
    let mut value = serde_json::to_value(config).expect("config is JSON");
    if let Some(map) = value.as_object_mut() {
        for key in ["train", "valid", "packing", "cache_dir"] {
            map.remove(key);
        }
    }
    value
}

/// Whether a record belongs to the validation share: the first 48 bits of
/// SHA-256(`split:` + key) below `fraction` of their range. The key is the `split_key` column
/// (as text), or the whole record.
fn is_held_out(record: &Record, split_key: &str, fraction: f64) -> Result<bool, Error> {
    let key = match (split_key.is_empty(), record.fields.get(split_key)) {
        (true, _) => serde_json::Value::Object(record.fields.clone()).to_string(),
        (false, Some(serde_json::Value::String(s))) => s.clone(),
        (false, Some(value)) => value.to_string(),
        (false, None) => {
            return Err(record.error(format!("missing field `{split_key}` (data.split_key)")));
        }
    };
    let digest = Sha256::digest(format!("split:{key}").as_bytes());
    let bits = digest[..6]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Ok((bits as f64) < fraction * (1u64 << 48) as f64)
}

/// The examples and counts of one split, records turned into examples in parallel.
fn build_split(
    builder: &ExampleBuilder<'_>,
    records: &[Record],
) -> Result<(Vec<Example>, SplitStats), Error> {
    let built: Vec<Built> = records
        .par_iter()
        .map(|record| builder.build(record))
        .collect::<Result<_, _>>()?;
    let mut stats = SplitStats {
        records: records.len(),
        ..SplitStats::default()
    };
    let mut examples = Vec::new();
    for b in built {
        stats.truncated += usize::from(b.truncated);
        stats.dropped += usize::from(b.dropped);
        for example in b.examples {
            stats.tokens += example.ids.len();
            stats.trained_tokens += example.trained_tokens();
            examples.push(example);
        }
    }
    stats.examples = examples.len();
    Ok((examples, stats))
}

fn empty_split(split: &str, files: &[String], stats: &SplitStats) -> Error {
    let files = match files.is_empty() {
        true => "[data]".to_owned(),
        false => files.join(", "),
    };
    Error::invalid(
        files,
        format!(
            "key `data.{split}`: no examples ({} records read, {} dropped as too long or with nothing to train)",
            stats.records, stats.dropped
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Origin, Position};

    fn record(n: usize) -> Record {
        let fields = serde_json::json!({ "id": format!("doc-{n}"), "text": "x" });
        Record {
            fields: fields.as_object().unwrap().clone(),
            origin: Origin {
                path: "d.jsonl".into(),
                position: Position::Line(n + 1),
            },
        }
    }

    #[test]
    fn split_is_deterministic_and_near_the_fraction() {
        let held: Vec<bool> = (0..2000)
            .map(|n| is_held_out(&record(n), "id", 0.1).unwrap())
            .collect();
        let again: Vec<bool> = (0..2000)
            .map(|n| is_held_out(&record(n), "id", 0.1).unwrap())
            .collect();
        assert_eq!(held, again);
        let count = held.iter().filter(|h| **h).count();
        assert!(
            (150..250).contains(&count),
            "{count} of 2000 held out at 10 %"
        );
        let message = is_held_out(&record(0), "source", 0.1)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "d.jsonl:1: missing field `source` (data.split_key)"
        );
    }
}
