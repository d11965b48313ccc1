//! Text templates: where a sample's image placeholders and caption sit in its token sequence.
//!
//! A template is plain text with exactly one `{image}` slot and one `{caption}` slot, e.g.
//! `<|vision_start|>{image}<|vision_end|>{caption}<|endoftext|>`. It is parsed once into literal
//! pieces and slots; the literal pieces are tokenized once when the tokenizer is loaded, so encoding a
//! sample only tokenizes its caption. The text right after `{caption}` must start with a special token:
//! that token is the end token the model learns to emit (it is supervised together with the caption).
use serde::{Deserialize, Serialize};

/// The CoMP pre-training template (the paper's Stages 1-2: image, then its caption, then end of text).
pub const COMP_PRETRAIN_TEMPLATE: &str =
    "<|vision_start|>{image}<|vision_end|>{caption}<|endoftext|>";

/// Qwen2-VL chat layout: the caption is the assistant's answer to a fixed "describe" request.
pub const QWEN2VL_CHAT_TEMPLATE: &str = "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>\
Describe the image.<|im_end|>\n<|im_start|>assistant\n{caption}<|im_end|>";

/// A template as configured: a preset name or the template text itself.
///
/// In a config file `template = "comp_pretrain"`, `template = "qwen2vl_chat"`, or any text with the two
/// slots, e.g. `template = "<|vision_start|>{image}<|vision_end|>Caption: {caption}<|endoftext|>"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Template(pub String);

impl Default for Template {
    fn default() -> Self {
        Template::comp_pretrain()
    }
}

impl Template {
    pub fn comp_pretrain() -> Self {
        Template("comp_pretrain".into())
    }
    pub fn qwen2vl_chat() -> Self {
        Template("qwen2vl_chat".into())
    }
    /// The template text, with preset names resolved.
    pub fn text(&self) -> &str {
        match self.0.as_str() {
            "comp_pretrain" => COMP_PRETRAIN_TEMPLATE,
            "qwen2vl_chat" => QWEN2VL_CHAT_TEMPLATE,
            other => other,
        }
    }

    /// Split into pieces; errors when a slot is missing, repeated, or nothing follows the caption.
    pub fn parse(&self) -> Result<Vec<Piece>, TemplateError> {
        let text = self.text();
        let mut pieces = Vec::new();
        let mut rest = text;
        let (mut images, mut captions) = (0usize, 0usize);
        while let Some(open) = rest.find('{') {
            let slot = if rest[open..].starts_with(IMAGE_SLOT) {
                images += 1;
                Some((Piece::Image, IMAGE_SLOT.len()))
            } else if rest[open..].starts_with(CAPTION_SLOT) {
                captions += 1;
                Some((Piece::Caption, CAPTION_SLOT.len()))
            } else {
                None
            };
            match slot {
                Some((piece, len)) => {
                    if open > 0 {
                        pieces.push(Piece::Literal(rest[..open].to_string()));
                    }
                    pieces.push(piece);
                    rest = &rest[open + len..];
                }
                None => {
                    // A brace that is not a slot is literal text.
                    pieces.push(Piece::Literal(rest[..=open].to_string()));
                    rest = &rest[open + 1..];
                }
            }
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        if images != 1 || captions != 1 {
            return Err(TemplateError::Slots {
                template: text.to_string(),
                images,
                captions,
            });
        }
        // Merge adjacent literals produced by stray braces so each literal is tokenized in one go.
        let mut merged: Vec<Piece> = Vec::with_capacity(pieces.len());
        for p in pieces {
            match (merged.last_mut(), p) {
                (Some(Piece::Literal(prev)), Piece::Literal(s)) => prev.push_str(&s),
                (_, p) => merged.push(p),
            }
        }
        let cap = merged.iter().position(|p| *p == Piece::Caption).unwrap();
        if !matches!(merged.get(cap + 1), Some(Piece::Literal(_))) {
            return Err(TemplateError::NoEndToken {
                template: text.to_string(),
            });
        }
        Ok(merged)
    }
}

const IMAGE_SLOT: &str = "{image}";
const CAPTION_SLOT: &str = "{caption}";

/// One part of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Image,
    Caption,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "template {template:?} must contain exactly one {{image}} and one {{caption}} (found {images} and {captions})"
    )]
    Slots {
        template: String,
        images: usize,
        captions: usize,
    },
    #[error(
        "template {template:?} has nothing after {{caption}}: it must be followed by an end token such as <|endoftext|>"
    )]
    NoEndToken { template: String },
    #[error(
        "template {template:?}: the text after {{caption}} must start with a special token (the supervised end token), found token {found:?}"
    )]
    EndNotSpecial { template: String, found: String },
}
