//! `--service`: the same run under the service manager (the Windows service's and the systemd
//! unit's command line). This file only hands [`super::run`] to `system::service::run` and
//! turns its code into the service's exit; it never decides an exit code of its own beyond
//! "bad start arguments" (2).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::system::service::{self, ServiceExit, ServiceSession};

use super::{Args, EXIT_UNUSABLE, exit_code, run};

/// `--service`: the same run under the service manager, which reports `RUNNING` before it
/// starts and `STOPPED` with its exit code; the start arguments (`--force` against the service)
/// are added to the command line.
pub fn run_as_service(argv: Vec<OsString>) -> ExitCode {
    let body = Box::new(move |session: ServiceSession| {
        let mut words = argv;
        words.extend(session.arguments().iter().cloned());
        let code = match Args::try_parse_from(&words) {
            Ok(cli) => exit_code(run(cli, Vec::new(), Some(&session))),
            Err(err) => {
                eprintln!("cms_agent: bad start arguments: {err}");
                EXIT_UNUSABLE
            }
        };
        match code {
            0 => ServiceExit::Clean,
            code => ServiceExit::Failed(code.into()),
        }
    });
    match service::run(body) {
        Ok(ServiceExit::Clean) => ExitCode::SUCCESS,
        Ok(ServiceExit::Failed(code)) => {
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_UNUSABLE))
        }
        Err(err) => {
            eprintln!("cms_agent: {err}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}
