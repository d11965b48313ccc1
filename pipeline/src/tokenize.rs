//! Captions to token sequences: the text half of a [`ProcessedSample`].
//!
//! Any Hugging Face `tokenizer.json` works; for the built-in demo we train a small byte-level BPE on the
//! demo captions ([`train_demo_tokenizer`]) with Qwen2-VL's special-token names, so the same template
//! and the same code serve a real Qwen2 tokenizer later.
//!
//! Why the sequence is assembled piecewise rather than by tokenizing one formatted string:
//! - the caption is tokenized alone, so the ids inside `caption_span` are exactly the caption-alone ids
//!   the alignment loss feeds to the LLM (CoMP §5), with no merge across the template boundary;
//! - the caption is tokenized with special-token matching switched off, so a caption that happens to
//!   contain `<|image_pad|>` or `<|endoftext|>` cannot forge placeholders or end the sample early;
//! - the template's literal pieces are tokenized once at load time; per sample only the caption is
//!   tokenized and the `{image}` slot is `n_image_tokens` copies of the placeholder id.
//!
//! Labels follow the CoMP text decoding loss: [`IGNORE_INDEX`] everywhere except the caption tokens and
//! the end token right after them.
pub mod template;

use std::path::{Path, PathBuf};

use comp_datasets::SampleId;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::batch::{IGNORE_INDEX, ProcessedSample};
pub use template::{COMP_PRETRAIN_TEMPLATE, Piece, QWEN2VL_CHAT_TEMPLATE, Template, TemplateError};

/// Errors of the text path. Data errors ([`TokenizeError::EmptyCaption`]) are per sample: the loader
/// skips and counts them; the others are configuration errors that stop start-up.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("cannot load tokenizer {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error(
        "tokenizer {path} has no token {token:?} (the {role} special token); set it in [text.special_tokens]"
    )]
    MissingSpecialToken {
        path: PathBuf,
        role: &'static str,
        token: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("empty caption")]
    EmptyCaption,
    #[error("max_caption_tokens must be at least 1")]
    ZeroMaxCaptionTokens,
    #[error("tokenizer failed on {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: tokenizers::Error,
    },
    #[error(
        "demo tokenizer vocab_size {vocab_size} is too small: byte-level BPE needs at least {min}"
    )]
    VocabTooSmall { vocab_size: usize, min: usize },
    #[error("training the demo tokenizer failed: {0}")]
    Train(#[source] tokenizers::Error),
    #[error("cannot write tokenizer to {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
}

/// The special tokens the template and the model refer to, by their text in `tokenizer.json`.
/// Defaults are Qwen2-VL's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecialTokens {
    pub endoftext: String,
    pub im_start: String,
    pub im_end: String,
    pub vision_start: String,
    pub vision_end: String,
    /// The image placeholder: replaced by the adapter's outputs in the LLM.
    pub image_pad: String,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        SpecialTokens {
            endoftext: "<|endoftext|>".into(),
            im_start: "<|im_start|>".into(),
            im_end: "<|im_end|>".into(),
            vision_start: "<|vision_start|>".into(),
            vision_end: "<|vision_end|>".into(),
            image_pad: "<|image_pad|>".into(),
        }
    }
}

impl SpecialTokens {
    /// `(role, token)` pairs in a fixed order (also the order of their ids in a demo tokenizer).
    pub fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("endoftext", &self.endoftext),
            ("im_start", &self.im_start),
            ("im_end", &self.im_end),
            ("vision_start", &self.vision_start),
            ("vision_end", &self.vision_end),
            ("image_pad", &self.image_pad),
        ]
    }
}

/// Text-side configuration: the single source of these defaults for the CLI, config files and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// `tokenizer.json` to load; `None` means the caller trains/uses the built-in demo tokenizer.
    pub tokenizer: Option<PathBuf>,
    pub template: Template,
    /// Captions longer than this (in tokens) are truncated; `EncodedText::truncated` reports it.
    pub max_caption_tokens: usize,
    pub special_tokens: SpecialTokens,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            tokenizer: None,
            template: Template::default(),
            max_caption_tokens: 128,
            special_tokens: SpecialTokens::default(),
        }
    }
}

/// Vocabulary size of the built-in demo tokenizer: small, so the demo LLM's embedding stays small.
pub const DEMO_VOCAB_SIZE: usize = 768;

/// Train a deterministic byte-level BPE on `captions` and save it as `tokenizer.json` at `out`.
///
/// The special tokens of [`SpecialTokens::default`] take ids 0..6; the 256 byte symbols follow, then
/// the merges. The same captions give a byte-identical file.
pub fn train_demo_tokenizer(
    captions: impl IntoIterator<Item = impl AsRef<str>>,
    vocab_size: usize,
    out: &Path,
) -> Result<(), TokenizeError> {
    let specials = SpecialTokens::default();
    let min = specials.all().len() + ByteLevel::alphabet().len();
    if vocab_size < min {
        return Err(TokenizeError::VocabTooSmall { vocab_size, min });
    }
    let captions: Vec<String> = captions
        .into_iter()
        .map(|c| c.as_ref().to_string())
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            specials
                .all()
                .iter()
                .map(|(_, t)| AddedToken::from(t.to_string(), true))
                .collect(),
        )
        .build();
    let pre = ByteLevel::new(false, true, true);
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(pre.into()))
    .with_decoder(Some(ByteLevelDecoder::default().into()))
    .build()
    .map_err(TokenizeError::Train)?;
    tokenizer
        .train(&mut trainer, captions.iter())
        .map_err(TokenizeError::Train)?;
    tokenizer
        .save(out, false)
        .map_err(|source| TokenizeError::Save {
            path: out.to_path_buf(),
            source,
        })
}

/// One caption placed in the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    pub input_ids: Vec<i64>,
    /// Same length as `input_ids`: the caption's ids and the end token after it, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    /// `[start, end)` of the caption tokens (without the end token) in `input_ids`.
    pub caption_span: [u32; 2],
    /// The caption was longer than `max_caption_tokens` and was cut.
    pub truncated: bool,
}

impl EncodedText {
    /// The caption's ids alone (what the alignment loss feeds to the LLM).
    pub fn caption_ids(&self) -> &[i64] {
        &self.input_ids[self.caption_span[0] as usize..self.caption_span[1] as usize]
    }

    /// Join with the image half into the unit the packer moves around.
    pub fn into_sample(
        self,
        id: SampleId,
        pixel_values: Vec<f32>,
        grid_thw: [i64; 3],
    ) -> ProcessedSample {
        ProcessedSample {
            id,
            pixel_values,
            grid_thw,
            input_ids: self.input_ids,
            labels: self.labels,
            caption_span: self.caption_span,
        }
    }
}

/// The template's pieces with literals already tokenized.
#[derive(Debug, Clone)]
enum EncodedPiece {
    Literal(Vec<i64>),
    Image,
    Caption,
}

/// Tokenizer + template, ready to encode captions from many threads (`&self` only, no interior state).
#[derive(Debug, Clone)]
pub struct CaptionTokenizer {
    /// Special-token matching off: captions are plain text.
    caption_tokenizer: Tokenizer,
    pieces: Vec<EncodedPiece>,
    image_token_id: i64,
    vocab_size: usize,
    max_caption_tokens: usize,
}

impl CaptionTokenizer {
    /// Load `path` and resolve the template and every configured special token (`cfg.tokenizer` is
    /// ignored: `path` wins, so callers can point at a freshly trained demo tokenizer).
    pub fn from_file(path: &Path, cfg: &TextConfig) -> Result<Self, TokenizeError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|source| TokenizeError::Load {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(tokenizer, path, cfg)
    }

    fn new(tokenizer: Tokenizer, path: &Path, cfg: &TextConfig) -> Result<Self, TokenizeError> {
        if cfg.max_caption_tokens == 0 {
            return Err(TokenizeError::ZeroMaxCaptionTokens);
        }
        let mut special_ids = Vec::new();
        for (role, token) in cfg.special_tokens.all() {
            let id =
                tokenizer
                    .token_to_id(token)
                    .ok_or_else(|| TokenizeError::MissingSpecialToken {
                        path: path.to_path_buf(),
                        role,
                        token: token.to_string(),
                    })?;
            special_ids.push(id as i64);
        }
        let image_token_id = special_ids[5];
        let template = &cfg.template;
        let parsed = template.parse()?;
        let mut pieces = Vec::with_capacity(parsed.len());
        let mut after_caption = false;
        for piece in parsed {
            pieces.push(match piece {
                Piece::Literal(text) => {
                    let ids = encode_ids(&tokenizer, &text, "template text")?;
                    if after_caption && !special_ids.contains(&ids[0]) {
                        return Err(TemplateError::EndNotSpecial {
                            template: template.text().to_string(),
                            found: tokenizer.id_to_token(ids[0] as u32).unwrap_or_default(),
                        }
                        .into());
                    }
                    after_caption = false;
                    EncodedPiece::Literal(ids)
                }
                Piece::Image => EncodedPiece::Image,
                Piece::Caption => {
                    after_caption = true;
                    EncodedPiece::Caption
                }
            });
        }
        let vocab_size = tokenizer.get_vocab_size(true);
        let mut caption_tokenizer = tokenizer;
        caption_tokenizer.set_encode_special_tokens(true);
        Ok(CaptionTokenizer {
            caption_tokenizer,
            pieces,
            image_token_id,
            vocab_size,
            max_caption_tokens: cfg.max_caption_tokens,
        })
    }

    /// The `<|image_pad|>` id.
    pub fn image_token_id(&self) -> i64 {
        self.image_token_id
    }

    /// Vocabulary size including added (special) tokens: the LLM's embedding rows must cover it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The caption's ids alone, truncated to `max_caption_tokens`; `true` when it was cut.
    pub fn encode_caption(&self, caption: &str) -> Result<(Vec<i64>, bool), TokenizeError> {
        if caption.trim().is_empty() {
            return Err(TokenizeError::EmptyCaption);
        }
        let mut ids = encode_ids(&self.caption_tokenizer, caption, "caption")?;
        let truncated = ids.len() > self.max_caption_tokens;
        ids.truncate(self.max_caption_tokens);
        Ok((ids, truncated))
    }

    /// Place `caption` and `n_image_tokens` placeholders into the template.
    pub fn encode(
        &self,
        caption: &str,
        n_image_tokens: usize,
    ) -> Result<EncodedText, TokenizeError> {
        let (caption_ids, truncated) = self.encode_caption(caption)?;
        let literal_len: usize = self
            .pieces
            .iter()
            .map(|p| match p {
                EncodedPiece::Literal(ids) => ids.len(),
                _ => 0,
            })
            .sum();
        let len = literal_len + n_image_tokens + caption_ids.len();
        let mut input_ids = Vec::with_capacity(len);
        let mut labels = Vec::with_capacity(len);
        let mut caption_span = [0u32; 2];
        let mut supervise_next = false;
        for piece in &self.pieces {
            match piece {
                EncodedPiece::Literal(ids) => {
                    input_ids.extend_from_slice(ids);
                    labels.resize(labels.len() + ids.len(), IGNORE_INDEX);
                    if supervise_next {
                        // The end token right after the caption is what the model learns to stop with.
                        labels[caption_span[1] as usize] = ids[0];
                        supervise_next = false;
                    }
                }
                EncodedPiece::Image => {
                    input_ids.resize(input_ids.len() + n_image_tokens, self.image_token_id);
                    labels.resize(labels.len() + n_image_tokens, IGNORE_INDEX);
                }
                EncodedPiece::Caption => {
                    caption_span[0] = input_ids.len() as u32;
                    input_ids.extend_from_slice(&caption_ids);
                    labels.extend_from_slice(&caption_ids);
                    caption_span[1] = input_ids.len() as u32;
                    supervise_next = true;
                }
            }
        }
        Ok(EncodedText {
            input_ids,
            labels,
            caption_span,
            truncated,
        })
    }

    /// Decode ids back to text (special tokens kept), for debugging and tests.
    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizeError> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.caption_tokenizer
            .decode(&ids, false)
            .map_err(|source| TokenizeError::Encode {
                what: "decode",
                source,
            })
    }
}

fn encode_ids(
    tokenizer: &Tokenizer,
    text: &str,
    what: &'static str,
) -> Result<Vec<i64>, TokenizeError> {
    let enc = tokenizer
        .encode_fast(text, false)
        .map_err(|source| TokenizeError::Encode { what, source })?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}
