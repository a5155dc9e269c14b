//! The `cms-server` binary: logging, the command line parsed, and an exit code; everything else
//! is the library (`cms_server::cli` runs the command).
//!
//! Logs go to stderr. Exit codes: 0 done, 1 failure (I/O, database), 2 refused (bad arguments
//! or settings, release already published, token name taken or unknown). This file must never
//! hold server logic.

use std::process::ExitCode;

use clap::Parser;
use cms_server::cli::{self, Cli};

fn main() -> ExitCode {
    init_logging();
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("cms-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
