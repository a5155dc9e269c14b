//! Build automation for the CMS Agent workspace (`cargo xtask <task>`).
//!
//! In the style of rust-analyzer's `xtask/`: this file only dispatches. Each task is a module
//! of its own with a `run` function (`demo`, `dist`, `bench`, `windows::{wine_test, installer,
//! msi, wine_e2e, wine_msi}`, `signing::{sign_check, sign_tool}`), and a task uses shared helpers only, never
//! another task: `util`, `flags`, `host`, `version`, `build`, `dist_tree`, `server`, `pki`,
//! `forward_proxy`, `installed_agent`, `checks`, `loopback`, `windows::{wine, inno, setup,
//! wine_net, wixl}`, `signing::{signer, hook}`. No module imports another in a circle (checked by the
//! `layering` test below). Tasks run real tools (cargo, the built binaries, Wine, ISCC) and fail loudly
//! with the command that failed; they never pretend a step passed.

use anyhow::{Result, bail};
use std::process::ExitCode;

#[cfg(target_os = "linux")]
mod bench;
mod build;
mod checks;
mod demo;
mod dist;
mod dist_tree;
mod flags;
mod forward_proxy;
mod host;
mod installed_agent;
mod loopback;
mod pki;
mod server;
mod signing;
mod trusted_root;
mod util;
mod version;
mod windows;

#[cfg(test)]
mod layering;

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
        "installer" => windows::installer::run(&rest),
        "msi" => windows::msi::run(&rest),
        "sign-check" => signing::sign_check::run(&rest),
        "sign-tool" => signing::sign_tool::run(&rest),
        "wine-test" => windows::wine_test::run(&rest),
        "wine-e2e" => windows::wine_e2e::run(&rest),
        "wine-msi" => windows::wine_msi::run(&rest),
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
         server on this machine into docs/BENCHMARKS.md (--quick: smoke test, target/bench/quick;\n              \
         Linux only; --replicas-only [--replica-max-agents M], --fleet-page-only\n              \
         [--fleet-page-agents N], --delta-only or --push-only (--agents N downloading a release\n              \
         at once): that step alone, replacing its section)\n  \
         demo        build, start cms-server on its SQLite default, run an agent against it\n  \
         dist        [--version X.Y.Z] [--target windows|linux|all] [--sign] [--trusted-root FILE]:\n              \
         release binaries into dist/ (default target: all; on Windows: windows), with the backend's\n              \
         TUF root (DIR/tuf/metadata/root.json) beside them as root.json when given\n  \
         installer   [--version X.Y.Z] [--trusted-root FILE] [--smoke-test] [--sign]:\n              \
         dist/cms_agent_setup-X.Y.Z.exe, building the Windows dist/ first when it is missing (ISCC\n              \
         natively on Windows, under Wine on Linux; --smoke-test: Linux + Wine only); embeds\n              \
         dist/windows-x86_64/root.json (or FILE), which per-machine installs pin\n  \
         msi         [--version X.Y.Z] [--sign]: dist/cms_agent-X.Y.Z-x64.msi with msitools' wixl\n              \
         (build_scripts/cms_agent.wxs), building the Windows dist/ first when it is missing\n  \
         sign-check  sign dist/ and the installer with a throwaway certificate, verify, tamper\n  \
         wine-test   [-p PKG]... [-- ARGS]: run the Windows tests under Wine (Linux only)\n  \
         wine-e2e    [--network-only]: install, IPC, self-update, rollback, --force, uninstall of the\n              \
         Windows agent under Wine, then HTTPS with a private CA and proxies (Linux only)\n  \
         wine-msi    the MSI under Wine's msiexec: refused over Inno Setup, install, upgrade,\n              \
         uninstall, REMOVEDATA=1 (needs dist/; Linux only)\n"
    );
}
