//! `cms_agent`: the CMS endpoint agent's binary. It parses the command line, calls
//! `cms_agent::cli::run` (or `run_as_service` with `--service`) and exits with the code it
//! returns; the command line, its exit codes and everything it does are in `cms_agent::cli`
//! (docs/CONTRACT.md).
//!
//! On Windows this is a GUI-subsystem program, so no console window opens at logon or under the
//! service manager; run from a console, it attaches to that console to print.

#![windows_subsystem = "windows"]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use cms_agent::cli::{self, Args};
use cms_agent::system;

fn main() -> ExitCode {
    system::attach_parent_console();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let args = Args::parse_from(&argv);
    if args.service {
        return cli::run_as_service(argv);
    }
    let force_args = cli::args_after_force(&argv);
    ExitCode::from(cli::exit_code(cli::run(args, force_args, None)))
}
