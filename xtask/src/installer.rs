//! `cargo xtask installer [--version X.Y.Z] [--smoke-test]`: the Windows installer.
//!
//! Compiles `build_scripts/installer.iss` with Inno Setup's `ISCC.exe` (npm package `innosetup`,
//! unpacked by `.ci/windows-deps.sh` into the CI cache; `$CMS_ISCC` overrides the path) under
//! Wine into `dist/cms_agent_setup-X.Y.Z.exe`, from the binaries `cargo xtask dist` put in
//! `dist/windows-x86_64/`. The version defaults to `dist/VERSION`, so the installer says what
//! the binaries say.
//!
//! `--smoke-test` then installs it silently per machine in a throwaway Wine prefix on a private
//! Xvfb display, checks the files in `C:\Program Files\CMS Agent` (and that no config.json was
//! shipped) and the autostart entry, uninstalls it and checks that both are gone.
//!
//! ISCC.exe and setup.exe are 32-bit: without 32-bit Wine (`wine32:i386`) the task prints
//! `SKIPPED: <check>: <reason>` and exits with [`SKIPPED_EXIT_CODE`], never 0: a skip is not a
//! pass. Must never: put anything but the `dist/` binaries into the installer (the `.iss`
//! decides; no config.json, never the Wine test shim).

use crate::dist::{self, WINDOWS};
use crate::util::{self, run_checked_timeout};
use crate::wine::{self, VirtualDisplay, WinePrefix};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Exit code of `cargo xtask installer` when a check was skipped (the automake convention).
pub const SKIPPED_EXIT_CODE: i32 = 77;

/// The Inno Setup script, relative to the workspace root.
const ISS: &str = "build_scripts/installer.iss";

/// Where a per-machine install lands, relative to `C:\` (`{autopf}\<AppName>` in the script).
const APP_DIR: &str = "Program Files/CMS Agent";

/// The autostart entry `cms_agent --enable-autostart` writes when elevated (design.md section 4).
const RUN_KEY: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run";
const RUN_VALUE: &str = "CMSAgent";

/// Time limits for ISCC and for setup/uninstall under Wine.
const ISCC_TIMEOUT: Duration = Duration::from_secs(600);
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// `cargo xtask installer [--version X.Y.Z] [--smoke-test]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = util::take_value(&mut args, &["--version"])?;
    let smoke = util::take_switch(&mut args, "--smoke-test");
    if util::take_switch(&mut args, "--sign") {
        bail!("installer --sign (Authenticode) is not implemented yet");
    }
    util::reject_rest("installer", &args)?;
    let version = match version {
        Some(v) => v,
        None => dist_version()?,
    };
    dist::check_version(&version)?;
    for (_, binary) in dist::BINARIES {
        dist::require_file(&dist::dist_binary(&WINDOWS, binary))
            .context("run `cargo xtask dist --target windows` first")?;
    }
    if let Err(reason) = wine::wine32_status() {
        skip("installer compile and smoke test", &reason);
    }
    let setup = compile(&version)?;
    if smoke {
        smoke_test(&setup)?;
    }
    Ok(())
}

/// Prints the SKIPPED line and ends the process with [`SKIPPED_EXIT_CODE`].
fn skip(what: &str, reason: &str) -> ! {
    println!("SKIPPED: {what}: {reason}");
    std::process::exit(SKIPPED_EXIT_CODE)
}

/// The version `cargo xtask dist` wrote to `dist/VERSION`, else the workspace version.
fn dist_version() -> Result<String> {
    let path = dist::dist_dir().join("VERSION");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(util::workspace_version().to_string())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The Windows form of an absolute Unix path, through Wine's `Z:` drive.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// ISCC.exe: `$CMS_ISCC`, else the newest `innosetup-*` in the CI cache.
pub fn iscc_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CMS_ISCC") {
        return Ok(PathBuf::from(path));
    }
    let cache = wine::ci_cache_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(&cache)
        .with_context(|| {
            format!(
                "no CI cache at {} (run .ci/windows-deps.sh)",
                cache.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("innosetup-"))
        })
        .map(|p| p.join("package/bin/ISCC.exe"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no innosetup-*/package/bin/ISCC.exe in {} (run .ci/windows-deps.sh)",
            cache.display()
        )
    })
}

/// Compiles the installer for `version`; returns the path of the setup exe.
pub fn compile(version: &str) -> Result<PathBuf> {
    let iscc = iscc_path()?;
    let prefix = wine::prepare_prefix("iscc")?;
    let dist = dist::dist_dir();
    let name = format!("cms_agent_setup-{version}");
    let mut cmd = prefix.command(&iscc);
    cmd.arg("/Q")
        .arg(format!("/DAppVersion={version}"))
        .arg(format!("/DDistDir={}", windows_path(&dist)))
        .arg(format!("/O{}", windows_path(&dist)))
        .arg(format!("/F{name}"))
        .arg(windows_path(&util::project_root().join(ISS)));
    let started = Instant::now();
    run_checked_timeout(&mut cmd, ISCC_TIMEOUT).context("ISCC failed")?;
    let setup = dist.join(format!("{name}.exe"));
    dist::require_file(&setup)?;
    eprintln!(
        "installer: {} in {:.0?}",
        setup.display(),
        started.elapsed()
    );
    Ok(setup)
}

/// Silent per-machine install and uninstall of `setup` in a throwaway prefix, with checks.
pub fn smoke_test(setup: &Path) -> Result<()> {
    let display = match VirtualDisplay::start() {
        Ok(display) => display,
        Err(e) => skip(
            "installer smoke test",
            &format!("no virtual display: {e:#}"),
        ),
    };
    let prefix = wine::prepare_prefix("installer-smoke")?;
    let app_dir = prefix.drive_c().join(APP_DIR);
    install(&prefix, &display, setup)?;
    check_installed(&prefix, &app_dir)?;
    uninstall(&prefix, &display, &app_dir)?;
    check_uninstalled(&prefix, &app_dir)?;
    eprintln!("installer smoke test: PASSED (install, files, autostart, uninstall)");
    Ok(())
}

/// `setup.exe /VERYSILENT /SUPPRESSMSGBOXES /ALLUSERS`, logging to `C:\setup-install.log`.
fn install(prefix: &WinePrefix, display: &VirtualDisplay, setup: &Path) -> Result<()> {
    let mut cmd = prefix.command(setup);
    cmd.env("DISPLAY", display.name()).args([
        "/VERYSILENT",
        "/SUPPRESSMSGBOXES",
        "/NORESTART",
        "/ALLUSERS",
        r"/LOG=C:\setup-install.log",
        // Nothing listens there: the agent starts, fails to register and retries.
        "/SERVER=http://127.0.0.1:9",
    ]);
    run_checked_timeout(&mut cmd, SETUP_TIMEOUT)
        .with_context(|| log_tail(prefix, "setup-install.log"))
        .context("silent install failed")
}

/// The installed files are there, config.json is not, and the autostart entry is.
fn check_installed(prefix: &WinePrefix, app_dir: &Path) -> Result<()> {
    for name in ["cms_agent.exe", "updater.exe", "unins000.exe"] {
        dist::require_file(&app_dir.join(name)).with_context(|| {
            format!(
                "install check failed\n{}",
                log_tail(prefix, "setup-install.log")
            )
        })?;
    }
    if app_dir.join("config.json").exists() {
        bail!(
            "the installer shipped config.json into {}",
            app_dir.display()
        );
    }
    if !autostart_present(prefix)? {
        bail!(
            "no autostart entry {RUN_KEY}\\{RUN_VALUE} after install (cms_agent --enable-autostart)\n{}",
            log_tail(prefix, "setup-install.log")
        );
    }
    Ok(())
}

/// Runs the uninstaller silently and waits until it has removed itself.
fn uninstall(prefix: &WinePrefix, display: &VirtualDisplay, app_dir: &Path) -> Result<()> {
    let uninstaller = app_dir.join("unins000.exe");
    let mut cmd = prefix.command(&uninstaller);
    cmd.env("DISPLAY", display.name()).args([
        "/VERYSILENT",
        "/SUPPRESSMSGBOXES",
        "/NORESTART",
        r"/LOG=C:\setup-uninstall.log",
    ]);
    run_checked_timeout(&mut cmd, SETUP_TIMEOUT).context("silent uninstall failed")?;
    // The uninstaller hands over to a copy of itself in %TEMP%; it is done when it is gone.
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while uninstaller.exists() {
        if Instant::now() >= deadline {
            bail!(
                "uninstall did not finish\n{}",
                log_tail(prefix, "setup-uninstall.log")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    prefix.wait_idle(SETUP_TIMEOUT)
}

/// The programs and the autostart entry are gone.
fn check_uninstalled(prefix: &WinePrefix, app_dir: &Path) -> Result<()> {
    for name in ["cms_agent.exe", "updater.exe"] {
        if app_dir.join(name).exists() {
            bail!(
                "{name} is still installed after uninstall\n{}",
                log_tail(prefix, "setup-uninstall.log")
            );
        }
    }
    if autostart_present(prefix)? {
        bail!("the autostart entry {RUN_KEY}\\{RUN_VALUE} is still there after uninstall");
    }
    Ok(())
}

/// Whether `HKLM\...\Run` has the `CMSAgent` value in the prefix.
fn autostart_present(prefix: &WinePrefix) -> Result<bool> {
    let mut cmd = prefix.command("reg");
    cmd.args(["query", RUN_KEY, "/v", RUN_VALUE]);
    let status = cmd
        .output()
        .with_context(|| format!("cannot start {}", util::describe(&cmd)))?
        .status;
    Ok(status.success())
}

/// The last lines of an Inno Setup log in `C:\`, for error messages.
fn log_tail(prefix: &WinePrefix, name: &str) -> String {
    let path = prefix.drive_c().join(name);
    match fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            format!("last lines of {}:\n{tail}", path.display())
        }
        Err(e) => format!("no log at {} ({e})", path.display()),
    }
}
