//! `cargo run -p sanhak-runner --example lab -- check labs/fashion-transfer`:
//! the `sanhak lab …` commands without the web app (for lab authors).

use clap::Parser;
use sanhak_runner::cli::LabCommand;

#[derive(Parser)]
#[command(name = "lab", about = "Sanhak lab package tools")]
struct Cli {
    #[command(subcommand)]
    command: LabCommand,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    Cli::parse().command.run()
}
