//! Files the binary ships so that it works with nothing but a data path.
use std::path::PathBuf;

use anyhow::{Context, Result};

/// The built-in demo tokenizer: a byte-level BPE trained on the demo captions (regenerated and compared
/// byte for byte by the test suite), so any caption text can be tokenized.
pub const DEMO_TOKENIZER_JSON: &str = include_str!("../../assets/tokenizer.json");

/// Path of the built-in tokenizer, written once to the user's cache directory.
pub fn default_tokenizer() -> Result<PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("comp");
    let path = dir.join(format!(
        "demo-tokenizer-{:016x}.json",
        crate::util::fnv1a64(DEMO_TOKENIZER_JSON.as_bytes())
    ));
    if !path.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, DEMO_TOKENIZER_JSON)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use comp_datasets::demo::{DemoConfig, generate_row};
    use comp_pipeline::tokenize::{DEMO_VOCAB_SIZE, train_demo_tokenizer};

    /// The shipped tokenizer is exactly what the demo trains on its default data.
    #[test]
    fn shipped_tokenizer_is_the_demo_tokenizer() {
        let cfg = DemoConfig::default();
        let captions: Vec<String> = (0..cfg.rows)
            .map(|i| generate_row(&cfg, i).unwrap().caption)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tokenizer.json");
        train_demo_tokenizer(captions.iter(), DEMO_VOCAB_SIZE, &out).unwrap();
        let regenerated = std::fs::read_to_string(&out).unwrap();
        assert!(
            regenerated == super::DEMO_TOKENIZER_JSON,
            "assets/tokenizer.json is stale: regenerate it"
        );
    }
}
