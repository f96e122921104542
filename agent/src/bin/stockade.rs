//! `stockade`: the node-local command line of the Stockade agent.

use std::process::ExitCode;

use clap::Parser;
use stockade_agent::cli::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::run(&cli).await
}
