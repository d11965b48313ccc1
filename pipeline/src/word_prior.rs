//! The word prior `u_W`: how often each vocabulary token occurs in the training captions.
//!
//! CoMP's alignment loss (comp-method.md §5) balances its Sinkhorn targets so that the word marginal
//! matches this prior. It is a property of the data, so the loader computes it (a cheap pass over the
//! captions, or incrementally while streaming) and writes it to a safetensors file the model reads:
//! tensor `counts` (I64, shape `[vocab]`) plus metadata (`num_captions`, `vocab_size`, `format`).
//! Only caption tokens count — the same ids the loader places in `caption_span` (truncation included) —
//! never template or image-placeholder tokens.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::tokenize::{CaptionTokenizer, TokenizeError};

const FORMAT: &str = "comp-word-prior-v1";

#[derive(Debug, thiserror::Error)]
pub enum WordPriorError {
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    IdOutOfRange { id: i64, vocab_size: usize },
    #[error("word priors over different vocabularies ({0} vs {1}) cannot be merged")]
    VocabMismatch(usize, usize),
    #[error("tokenizing a caption for the word prior failed: {0}")]
    Tokenize(#[from] TokenizeError),
    #[error("cannot {op} word prior {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("word prior {path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Token counts over captions. `counts[id]` is the number of occurrences of token `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordPrior {
    pub counts: Vec<u64>,
    /// How many captions were added.
    pub num_captions: u64,
}

impl WordPrior {
    pub fn new(vocab_size: usize) -> Self {
        WordPrior {
            counts: vec![0; vocab_size],
            num_captions: 0,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.counts.len()
    }

    /// Count one caption's token ids (caption tokens only).
    pub fn add(&mut self, caption_ids: &[i64]) -> Result<(), WordPriorError> {
        let vocab_size = self.counts.len();
        if let Some(&id) = caption_ids
            .iter()
            .find(|&&id| id < 0 || id as usize >= vocab_size)
        {
            return Err(WordPriorError::IdOutOfRange { id, vocab_size });
        }
        for &id in caption_ids {
            self.counts[id as usize] += 1;
        }
        self.num_captions += 1;
        Ok(())
    }

    /// Add another prior's counts (e.g. one computed by another worker).
    pub fn merge(&mut self, other: &WordPrior) -> Result<(), WordPriorError> {
        if other.counts.len() != self.counts.len() {
            return Err(WordPriorError::VocabMismatch(
                self.counts.len(),
                other.counts.len(),
            ));
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.num_captions += other.num_captions;
        Ok(())
    }

    /// Count the captions as the loader would tokenize them. Empty captions are skipped (the loader
    /// skips those samples too); the number skipped is returned alongside.
    pub fn from_captions(
        captions: impl IntoIterator<Item = impl AsRef<str>>,
        tokenizer: &CaptionTokenizer,
    ) -> Result<(Self, u64), WordPriorError> {
        let mut prior = WordPrior::new(tokenizer.vocab_size());
        let mut skipped = 0;
        for caption in captions {
            match tokenizer.encode_caption(caption.as_ref()) {
                Ok((ids, _)) => prior.add(&ids)?,
                Err(TokenizeError::EmptyCaption) => skipped += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok((prior, skipped))
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Additively smoothed frequencies `(count + smoothing) / (total + smoothing * vocab)`; they sum to 1.
    /// With `smoothing = 0` and no counts at all the result is uniform.
    pub fn probabilities(&self, smoothing: f64) -> Vec<f64> {
        let v = self.counts.len() as f64;
        let denom = self.total() as f64 + smoothing * v;
        if denom <= 0.0 {
            return vec![1.0 / v; self.counts.len()];
        }
        self.counts
            .iter()
            .map(|&c| (c as f64 + smoothing) / denom)
            .collect()
    }

    /// Write as safetensors: tensor `counts` (I64, `[vocab]`) and metadata.
    pub fn save(&self, path: &Path) -> Result<(), WordPriorError> {
        let bytes: Vec<u8> = self
            .counts
            .iter()
            .flat_map(|&c| (c as i64).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::I64, vec![self.counts.len()], &bytes)
            .map_err(|e| format_err(path, e))?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("num_captions".to_string(), self.num_captions.to_string()),
            ("vocab_size".to_string(), self.counts.len().to_string()),
        ]);
        let buf = safetensors::serialize([("counts", view)], Some(metadata))
            .map_err(|e| format_err(path, e))?;
        std::fs::write(path, buf).map_err(|source| WordPriorError::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Read a prior written by [`WordPrior::save`] (or any safetensors file with an I64 or F64 `counts`
    /// vector; `num_captions` defaults to 0 when the metadata lacks it).
    pub fn load(path: &Path) -> Result<Self, WordPriorError> {
        let buf = std::fs::read(path).map_err(|source| WordPriorError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let st = SafeTensors::deserialize(&buf).map_err(|e| format_err(path, e))?;
        let t = st.tensor("counts").map_err(|e| format_err(path, e))?;
        if t.shape().len() != 1 {
            return Err(format_err(
                path,
                format!("`counts` must be 1-D, has shape {:?}", t.shape()),
            ));
        }
        let chunks = t.data().chunks_exact(8);
        let counts: Vec<u64> = match t.dtype() {
            Dtype::I64 => chunks
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()).max(0) as u64)
                .collect(),
            Dtype::F64 => chunks
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()).round().max(0.0) as u64)
                .collect(),
            other => {
                return Err(format_err(
                    path,
                    format!("`counts` must be I64 or F64, is {other:?}"),
                ));
            }
        };
        let (_, meta) = SafeTensors::read_metadata(&buf).map_err(|e| format_err(path, e))?;
        let info = meta.metadata().clone().unwrap_or_default();
        if let Some(v) = info.get("vocab_size")
            && v.parse::<usize>().ok() != Some(counts.len())
        {
            return Err(format_err(
                path,
                format!(
                    "metadata vocab_size {v} does not match {} counts",
                    counts.len()
                ),
            ));
        }
        let num_captions = match info.get("num_captions") {
            Some(n) => n
                .parse()
                .map_err(|_| format_err(path, format!("bad num_captions {n:?}")))?,
            None => 0,
        };
        Ok(WordPrior {
            counts,
            num_captions,
        })
    }
}

fn format_err(path: &Path, reason: impl std::fmt::Display) -> WordPriorError {
    WordPriorError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
