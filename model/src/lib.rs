//! The CoMP model in libtorch (tch): a C-RoPE vision encoder, the patch-merging adapter, a Qwen2 LLM,
//! the decoding and Sinkhorn alignment losses, and Hugging Face checkpoint import/export.
//!
//! Specification: `docs/comp-method.md` §2–5. Input is the loader's `PackedBatch`, turned into tensors
//! in one place ([`BatchTensors::from_packed`]). One file per concept: [`vision`], [`adapter`],
//! [`qwen2`], [`attention`] (packed, mask-free), [`rope`], [`loss`], [`model`], [`checkpoint`].
pub mod adapter;
pub mod attention;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod layers;
pub mod loss;
pub mod model;
pub mod qwen2;
pub mod rope;
pub mod vision;

pub use batch::BatchTensors;
pub use config::{
    AdapterConfig, AlignMode, CompConfig, LlmConfig, LossConfig, PosInterp, VisionConfig,
    VisionFamily,
};
pub use error::ModelError;
pub use model::{CompModel, ForwardOptions, LossOutput, Part};
