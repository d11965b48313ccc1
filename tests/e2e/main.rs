//! End-to-end tests through the real `comp` binary: `cargo test --release --test e2e`.
//!
//! - `train`: the three stages train and freeze the right parts, the loss falls, SIGKILL + `--resume`
//!   reproduces an uninterrupted run bit for bit, damaged checkpoints fall back, bad data is skipped
//!   and reported (issue 5).
//! - `encode`: feature maps from the exported tower.
//! - `cli`: `comp doctor`, `comp data bench` on bad data, `comp preprocess` against transformers.
mod cli;
mod common;
mod encode;
mod train;
