//! The streaming multimodal loader: Parquet rows in, [`PackedBatch`]es out.
//!
//! Stages (each module owns one concept):
//! - [`decode`]: image bytes to RGB8 at native resolution (EXIF orientation, bomb checks);
//! - [`resize`]: Qwen2-VL `smart_resize` and resampling;
//! - [`patchify`]: normalise and cut into merge-window-ordered patches (with resampling fused in, by
//!   the private `fused` kernel, when the size changes);
//! - [`tokenize`]: captions to token sequences with image placeholders and labels;
//! - [`pack`]: bucket by patch count and pack under budgets;
//! - [`word_prior`]: token frequencies over captions (the alignment loss's prior);
//! - [`loader`]: the async stages, backpressure, metrics and resumable state.
pub mod batch;
pub mod decode;
mod fused;
// `loader` is enabled once the stages it joins have landed.
pub mod loader;
pub mod pack;
pub mod patchify;
pub mod resize;
pub mod tokenize;
pub mod word_prior;

pub use batch::{Budgets, FillStats, IGNORE_INDEX, PackedBatch, ProcessedSample};
pub use decode::{ImageError, decode};
pub use pack::{PackConfig, PackError, Packer, PendingBatch};
pub use patchify::{ProcessedImage, patch_dim, process_image, process_rgb};
pub use resize::{ImageConfig, ResizePolicy, smart_resize};
pub use tokenize::{
    CaptionTokenizer, EncodedText, TextConfig, TokenizeError, train_demo_tokenizer,
};
pub use word_prior::{WordPrior, WordPriorError};
