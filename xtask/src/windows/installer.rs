//! `cargo xtask installer [--version X.Y.Z] [--trusted-root FILE] [--smoke-test] [--sign]`:
//! the Windows installer, `dist/cms_agent_setup-X.Y.Z.exe`, in one command.
//!
//! The version defaults to `dist/VERSION`, so the installer says what the binaries say. When
//! `dist/` does not hold the Windows binaries of that version, they are built first, as
//! `cargo xtask dist --target windows --version X.Y.Z` does (clean `dist/`, build the agent
//! and the updater, check the output); then ISCC compiles the installer
//! ([`crate::windows::inno`]: natively on Windows, under Wine on Linux).
//!
//! `--trusted-root FILE` (the backend's `DIR/tuf/metadata/root.json`) is checked and put in
//! `dist/windows-x86_64/root.json`, as `cargo xtask dist --trusted-root` does; whenever that
//! file is there the installer embeds it, and a per-machine install pins it instead of trusting
//! the server's root on first use. Without it the installer is built as before.
//!
//! `--sign` Authenticode-signs the embedded uninstaller, any program in `dist/windows-x86_64/`
//! not signed yet (in place), and the setup exe, with the certificate of the `CMS_SIGN_*`
//! variables ([`crate::signing::signer`]); then checks that all three carry a signature.
//!
//! `--smoke-test` then installs it silently in throwaway Wine prefixes on a private Xvfb
//! display (Linux only): per machine (files in `C:\Program Files\CMS Agent`, no config.json
//! shipped, the service `CMSAgent` running `cms_agent.exe --service` as LocalSystem with
//! automatic start and no HKLM `Run` value, an upgrade over the running service that stops it
//! through the SCM, uninstall deletes the service and keeps the data) and per user (the HKCU
//! `Run` value with `--per-user`, removed by the uninstall, which with `/PURGE` removes the
//! data).
//!
//! Without 32-bit Wine (ISCC.exe and setup.exe are 32-bit) or a display the task prints
//! `SKIPPED: <check>: <reason>` and exits with 77, never 0: a skip is not a pass.
//!
//! Must never: build an installer from binaries of another version than the one it is named
//! for.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::build::WINDOWS;
use crate::checks::{self, Checks};
use crate::dist_tree;
use crate::flags;
use crate::signing::signer::Signer;
use crate::trusted_root::TrustedRoot;
use crate::util;
use crate::version;
use crate::windows::inno;
use crate::windows::setup::{self, APP_DIR, Hive, NO_SERVER};
use crate::windows::wine::{self, VirtualDisplay, WinePrefix};

/// `cargo xtask installer [--version X.Y.Z] [--trusted-root FILE] [--smoke-test] [--sign]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = flags::take_value(&mut args, &["--version"])?;
    let smoke = flags::take_switch(&mut args, "--smoke-test");
    let sign = flags::take_switch(&mut args, "--sign");
    let root = TrustedRoot::take_flag(&mut args)?;
    flags::reject_rest("installer", &args)?;
    if smoke {
        wine::require_wine_host("installer --smoke-test")?;
    }
    let signer = sign.then(Signer::from_env).transpose()?;
    let version = match version {
        Some(v) => v,
        None => dist_tree::version()?,
    };
    version::check(&version)?;
    if let Err(reason) = inno::availability() {
        checks::skip("installer compile and smoke test", &reason);
    }
    if !dist_tree::holds(&WINDOWS, &version) {
        eprintln!(
            "installer: dist/ does not hold the Windows {version} binaries: building them \
             (as cargo xtask dist --target windows --version {version})"
        );
        dist_tree::build(&version, &[WINDOWS], None)?;
    }
    if let Some(root) = &root {
        dist_tree::add_trusted_root(root, &[WINDOWS])?;
    }
    let setup = inno::Setup::from_dist(&version).signed(signer).compile()?;
    if smoke {
        smoke_test(&setup)?;
    }
    Ok(())
}

/// Silent installs of `setup` in throwaway prefixes, with checks: per machine (install,
/// upgrade over the running agent, uninstall) and per user (install, uninstall). Every check
/// runs and prints ok/FAIL; any failure fails the test.
fn smoke_test(setup: &Path) -> Result<()> {
    let display = match VirtualDisplay::start() {
        Ok(display) => display,
        Err(e) => checks::skip(
            "installer smoke test",
            &format!("no virtual display: {e:#}"),
        ),
    };
    let mut checks = Checks::default();
    per_machine(&display, setup, &mut checks)?;
    per_user(&display, setup, &mut checks)?;
    checks.finish("installer smoke test")
}

/// `/ALLUSERS`: into `C:\Program Files\CMS Agent`, the service `CMSAgent`, then an upgrade in
/// place over the running service.
fn per_machine(display: &VirtualDisplay, setup: &Path, checks: &mut Checks) -> Result<()> {
    let prefix = wine::prepare_prefix("installer-smoke")?;
    let app_dir = prefix.drive_c().join(APP_DIR);
    setup::install(
        &prefix,
        display,
        setup,
        "/ALLUSERS",
        "setup-install.log",
        NO_SERVER,
    )?;
    check_installed(checks, &prefix, &app_dir, "setup-install.log");
    checks.check(
        "per machine: the service CMSAgent runs `cms_agent.exe --service` as LocalSystem, automatic start",
        || with_log(setup::service_expect(&prefix, true), &prefix, "setup-install.log"),
    );
    checks.check("per machine: no HKLM Run value", || {
        setup::run_value_expect(&prefix, Hive::Machine, false)
    });
    // Upgrade in place: the service the first install started must be stopped through the SCM,
    // or its exe cannot be replaced.
    setup::install(
        &prefix,
        display,
        setup,
        "/ALLUSERS",
        "setup-upgrade.log",
        NO_SERVER,
    )
    .context("upgrade over a running agent")?;
    checks.check(
        "per machine: an upgrade over the running service replaced the programs",
        || files_present(&app_dir, &["cms_agent.exe", "updater.exe"]),
    );
    checks.check(
        "per machine: the upgrade stopped the service through the SCM",
        || setup::log_says(&prefix, "setup-upgrade.log", "through the SCM"),
    );
    let data = plant_data(&prefix.drive_c().join("ProgramData/CMSAgent"))?;
    setup::uninstall(&prefix, display, &app_dir, &[])?;
    check_uninstalled(checks, &prefix, &app_dir);
    checks.check("per machine: the data folder is kept (no /PURGE)", || {
        util::require_file(&data)
    });
    checks.check("per machine: the service is deleted", || {
        setup::service_expect(&prefix, false)
    });
    Ok(())
}

/// `/CURRENTUSER`: into `%LOCALAPPDATA%\Programs\CMS Agent`, the HKCU `Run` value, uninstalled
/// with `/PURGE`. (Wine runs everything as an administrator; `--per-user` in the entry makes
/// the agent the user's all the same.)
fn per_user(display: &VirtualDisplay, setup: &Path, checks: &mut Checks) -> Result<()> {
    let prefix = wine::prepare_prefix("installer-smoke-user")?;
    setup::install(
        &prefix,
        display,
        setup,
        "/CURRENTUSER",
        "setup-install.log",
        NO_SERVER,
    )?;
    let app_dir = setup::per_user_app_dir(&prefix)?;
    check_installed(checks, &prefix, &app_dir, "setup-install.log");
    checks.check(
        "per user: the HKCU Run value starts `cms_agent.exe --per-user`",
        || {
            let value =
                setup::autostart_value(&prefix, Hive::User)?.context("no HKCU Run value")?;
            match value.contains("--per-user") {
                true => Ok(()),
                false => bail!("{value}"),
            }
        },
    );
    checks.check("per user: no service", || {
        setup::service_expect(&prefix, false)
    });
    // <user>\AppData\Local\Programs\CMS Agent -> <user>\AppData\Local\CMSAgent
    let local_app_data = app_dir.parent().and_then(Path::parent).unwrap_or(&app_dir);
    let data = plant_data(&local_app_data.join("CMSAgent"))?;
    setup::uninstall(&prefix, display, &app_dir, &["/PURGE"])?;
    check_uninstalled(checks, &prefix, &app_dir);
    checks.check("per user: the HKCU Run value is removed", || {
        setup::run_value_expect(&prefix, Hive::User, false)
    });
    checks.check("per user: /PURGE removed the data folder", || {
        match data.exists() {
            true => bail!("{} is still there", data.display()),
            false => Ok(()),
        }
    });
    Ok(())
}

/// The programs and the uninstaller are in `app_dir`, config.json is not.
fn check_installed(checks: &mut Checks, prefix: &WinePrefix, app_dir: &Path, log: &str) {
    let label = mode_label(app_dir);
    checks.check(
        format!("{label}: the programs and the uninstaller are installed"),
        || {
            let names = ["cms_agent.exe", "updater.exe", "unins000.exe"];
            with_log(files_present(app_dir, &names), prefix, log)
        },
    );
    checks.check(
        format!("{label}: no config.json was shipped"),
        || match app_dir.join("config.json").exists() {
            true => bail!("found {}", app_dir.join("config.json").display()),
            false => Ok(()),
        },
    );
}

/// The programs are gone from `app_dir`.
fn check_uninstalled(checks: &mut Checks, prefix: &WinePrefix, app_dir: &Path) {
    checks.check(
        format!("{}: the programs are removed", mode_label(app_dir)),
        || match ["cms_agent.exe", "updater.exe"]
            .iter()
            .find(|n| app_dir.join(n).exists())
        {
            Some(name) => bail!(
                "{name} is still there\n{}",
                setup::log_tail(prefix, "setup-uninstall.log")
            ),
            None => Ok(()),
        },
    );
}

/// "per machine" or "per user", from where the install went.
fn mode_label(app_dir: &Path) -> &'static str {
    if app_dir.to_string_lossy().contains("/users/") {
        "per user"
    } else {
        "per machine"
    }
}

/// Fails unless every one of `names` is a non-empty file in `dir`.
fn files_present(dir: &Path, names: &[&str]) -> Result<()> {
    names
        .iter()
        .try_for_each(|name| util::require_file(&dir.join(name)))
}

/// A file in the agent's data folder `dir` (made if missing), to see what uninstall keeps.
fn plant_data(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join("smoke-test-data.txt");
    fs::write(&file, "made by the installer smoke test\n")
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// `result`, with the tail of the setup log `log` after the error when it failed.
fn with_log(result: Result<()>, prefix: &WinePrefix, log: &str) -> Result<()> {
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", setup::log_tail(prefix, log)))
}
