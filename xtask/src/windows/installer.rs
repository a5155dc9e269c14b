//! `cargo xtask installer [--version X.Y.Z] [--smoke-test] [--sign]`: the Windows installer,
//! `dist/cms_agent_setup-X.Y.Z.exe`, in one command.
//!
//! The version defaults to `dist/VERSION`, so the installer says what the binaries say. When
//! `dist/` does not hold the Windows binaries of that version, they are built first, as
//! `cargo xtask dist --target windows --version X.Y.Z` does (clean `dist/`, build the agent
//! and the updater, check the output); then ISCC compiles the installer
//! ([`crate::windows::inno`]: natively on Windows, under Wine on Linux).
//!
//! `--sign` Authenticode-signs the embedded uninstaller, any program in `dist/windows-x86_64/`
//! not signed yet (in place), and the setup exe, with the certificate of the `CMS_SIGN_*`
//! variables ([`crate::signing::signer`]); then checks that all three carry a signature.
//!
//! `--smoke-test` then installs it silently in throwaway Wine prefixes on a private Xvfb
//! display (Linux only): per machine (files in `C:\Program Files\CMS Agent`, no config.json
//! shipped, the autostart entry, an upgrade over the running agent, uninstall keeps the data)
//! and per user (uninstall with `/PURGE` removes the data).
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
use crate::util;
use crate::version;
use crate::windows::inno;
use crate::windows::setup::{self, APP_DIR, APP_NAME, NO_SERVER, RUN_KEY, RUN_VALUE};
use crate::windows::wine::{self, VirtualDisplay, WinePrefix};

/// `cargo xtask installer [--version X.Y.Z] [--smoke-test] [--sign]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = flags::take_value(&mut args, &["--version"])?;
    let smoke = flags::take_switch(&mut args, "--smoke-test");
    let sign = flags::take_switch(&mut args, "--sign");
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
    let setup = inno::compile(&version, signer)?;
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

/// `/ALLUSERS`: into `C:\Program Files\CMS Agent`, autostart in HKLM, then an upgrade in place.
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
        "per machine: the autostart entry was written (cms_agent --enable-autostart)",
        || {
            with_log(
                autostart_expect(&prefix, true),
                &prefix,
                "setup-install.log",
            )
        },
    );
    // Upgrade in place: the agent the first install started must be stopped, or its exe
    // cannot be replaced.
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
        "per machine: an upgrade over the running agent replaced the programs",
        || files_present(&app_dir, &["cms_agent.exe", "updater.exe"]),
    );
    let data = plant_data(&prefix.drive_c().join("ProgramData/CMSAgent"))?;
    setup::uninstall(&prefix, display, &app_dir, &[])?;
    check_uninstalled(checks, &prefix, &app_dir);
    checks.check("per machine: the data folder is kept (no /PURGE)", || {
        util::require_file(&data)
    });
    checks.check("per machine: the autostart entry is removed", || {
        autostart_expect(&prefix, false)
    });
    Ok(())
}

/// `/CURRENTUSER`: into `%LOCALAPPDATA%\Programs\CMS Agent`, uninstalled with `/PURGE`.
/// (Wine runs everything as an administrator, so the agent's own per-user paths are not what
/// this checks.)
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
    let app_dir = per_user_app_dir(&prefix)?;
    check_installed(checks, &prefix, &app_dir, "setup-install.log");
    // <user>\AppData\Local\Programs\CMS Agent -> <user>\AppData\Local\CMSAgent
    let local_app_data = app_dir.parent().and_then(Path::parent).unwrap_or(&app_dir);
    let data = plant_data(&local_app_data.join("CMSAgent"))?;
    setup::uninstall(&prefix, display, &app_dir, &["/PURGE"])?;
    check_uninstalled(checks, &prefix, &app_dir);
    checks.check("per user: /PURGE removed the data folder", || {
        match data.exists() {
            true => bail!("{} is still there", data.display()),
            false => Ok(()),
        }
    });
    Ok(())
}

/// Where a per-user install lands: `C:\users\<user>\AppData\Local\Programs\CMS Agent`.
fn per_user_app_dir(prefix: &WinePrefix) -> Result<PathBuf> {
    let users = prefix.drive_c().join("users");
    let entries =
        fs::read_dir(&users).with_context(|| format!("cannot list {}", users.display()))?;
    entries
        .filter_map(|e| {
            e.ok()
                .map(|e| e.path().join("AppData/Local/Programs").join(APP_NAME))
        })
        .find(|dir| dir.is_dir())
        .with_context(|| {
            format!(
                "no per-user install under {}/*/AppData/Local/Programs\n{}",
                users.display(),
                setup::log_tail(prefix, "setup-install.log")
            )
        })
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

/// Fails unless the autostart value's presence is `expected`.
fn autostart_expect(prefix: &WinePrefix, expected: bool) -> Result<()> {
    match setup::autostart_value(prefix)?.is_some() {
        found if found == expected => Ok(()),
        true => bail!("{RUN_KEY}\\{RUN_VALUE} is still there"),
        false => bail!("{RUN_KEY}\\{RUN_VALUE} is missing"),
    }
}

/// `result`, with the tail of the setup log `log` after the error when it failed.
fn with_log(result: Result<()>, prefix: &WinePrefix, log: &str) -> Result<()> {
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", setup::log_tail(prefix, log)))
}
