//! `comp`: continual multimodal pre-training (CoMP) of vision foundation models on streamed Parquet shards.
//!
//! The binary is thin: each subcommand lives in `src/cli/<name>.rs` and calls into the library crates
//! (`comp-datasets`, `comp-pipeline`, `comp-model`) and the trainer in `src/train/`.
use clap::{Parser, Subcommand};

mod cli;
mod eval;
mod train;
mod util;

#[derive(Parser)]
#[command(
    name = "comp",
    version,
    about = "CoMP: continual multimodal pre-training of vision foundation models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train: with no arguments, the built-in demo end to end; `--config FILE.toml` for a real run.
    Train(cli::train::TrainArgs),
    /// Write preprocessed images (and text) as safetensors with Hugging Face Qwen2-VL names.
    Preprocess(cli::preprocess::PreprocessArgs),
    /// Native-resolution features from a (CoMP-trained) vision tower.
    Encode(cli::encode::EncodeArgs),
    /// Write deterministic synthetic image-caption shards (Hugging Face layout) for demos and tests.
    MakeDemoData(cli::data::MakeDemoDataArgs),
    /// Look at and benchmark Parquet image-text data.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
    /// Check the install: libtorch version, CUDA devices, CPU threads, a tiny tensor computation.
    Doctor,
}

fn main() -> std::process::ExitCode {
    cli::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Preprocess(args) => cli::preprocess::run(args),
        Command::Encode(args) => cli::encode::run(args),
        Command::MakeDemoData(args) => cli::data::make_demo_data(args),
        Command::Data(cmd) => cli::data::run(cmd),
        Command::Doctor => cli::doctor::run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
