//! `cargo run -p sanhak-runner --example lab -- check labs/fashion-transfer`:
//! the `sanhak lab …` commands without the web app (for lab authors).

use clap::Parser;
use sanhak_runner::cli::LabCommand;

#[derive(Parser)]
#[command(name = "lab", about = "Sanhak lab package tools")]
struct Cli {
    /// Folder holding the lab packages.
    #[arg(long, default_value = "labs", global = true)]
    labs_dir: std::path::PathBuf,
    /// Folder of shared pretrained models (`sanhak model fetch`).
    #[arg(long, default_value = "data/models", global = true)]
    models_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: LabCommand,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    cli.command.run(&cli.labs_dir, &cli.models_dir)
}
