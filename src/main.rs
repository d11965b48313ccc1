//! `comp`: continual multimodal pre-training (CoMP) of vision foundation models on streamed Parquet shards.
//!
//! The binary is thin: each subcommand lives in `src/cli/<name>.rs` and calls into the library crates
//! (`comp-datasets`, `comp-pipeline`, `comp-model`).
use clap::{Parser, Subcommand};

mod cli;
#[allow(dead_code)]
mod train;

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
    /// Check the install: libtorch version, CUDA devices, CPU threads, a tiny tensor computation.
    Doctor,
    /// Write deterministic synthetic image-caption shards (Hugging Face layout) for demos and tests.
    MakeDemoData(cli::data::MakeDemoDataArgs),
    /// Look at Parquet image-text data.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
}

fn main() -> std::process::ExitCode {
    cli::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => cli::doctor::run(),
        Command::MakeDemoData(args) => cli::data::make_demo_data(args),
        Command::Data(cmd) => cli::data::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
