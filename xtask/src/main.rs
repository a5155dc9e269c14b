//! Build automation for the CMS Agent workspace (`cargo xtask <task>`).
//!
//! One module per task, in the style of rust-analyzer's `xtask/`. Tasks run real tools (cargo,
//! the built binaries, Wine, ISCC) and fail loudly with the command that failed; they never
//! pretend a step passed.

use anyhow::{Result, bail};
use std::process::ExitCode;

#[cfg(target_os = "linux")]
mod bench;
mod demo;
mod dist;
mod installer;
mod iscc_sign;
mod loopback;
mod sign;
mod sign_check;
mod util;
mod wine;
mod wine_e2e;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        #[cfg(target_os = "linux")]
        "bench" => bench::run(&rest),
        #[cfg(not(target_os = "linux"))]
        "bench" => bail!("bench reads /proc: it runs on Linux only"),
        "demo" => demo::run(&rest),
        "dist" => dist::run(&rest),
        "installer" => installer::run(&rest),
        "sign-check" => sign_check::run(&rest),
        "wine-test" => wine::run(&rest),
        "wine-e2e" => wine_e2e::run(&rest),
        "" | "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => {
            print_help();
            bail!("unknown task {other:?}")
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         tasks:\n  \
         bench       [--quick] [--no-windows] [--agents N] [--max-agents M]: measure the agent and\n              \
         server on this machine into docs/BENCHMARKS.md (--quick: smoke test, target/bench/quick)\n  \
         demo        build, start cms-server on its SQLite default, run an agent against it\n  \
         dist        [--version X.Y.Z] [--target windows|linux|all] [--sign]: release binaries into dist/\n  \
         installer   [--version X.Y.Z] [--smoke-test] [--sign]: dist/cms_agent_setup-X.Y.Z.exe (ISCC under Wine)\n  \
         sign-check  sign dist/ and the installer with a throwaway certificate, verify, tamper\n  \
         wine-test   [-p PKG]... [-- ARGS]: run the Windows tests under Wine\n  \
         wine-e2e    install, IPC, self-update, rollback, --force, uninstall of the Windows agent under Wine\n"
    );
}
