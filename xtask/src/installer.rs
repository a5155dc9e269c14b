//! `cargo xtask installer [--version X.Y.Z] [--smoke-test] [--sign]`: the Windows installer.
//!
//! Compiles `build_scripts/installer.iss` with Inno Setup's `ISCC.exe` (npm package `innosetup`,
//! unpacked by `.ci/windows-deps.sh` into the CI cache; `$CMS_ISCC` overrides the path) under
//! Wine into `dist/cms_agent_setup-X.Y.Z.exe`, from the binaries `cargo xtask dist` put in
//! `dist/windows-x86_64/`. The version defaults to `dist/VERSION`, so the installer says what
//! the binaries say.
//!
//! `--sign` Authenticode-signs through Inno Setup's Sign Tool hook ([`crate::iscc_sign`]): the
//! embedded uninstaller, any program in `dist/windows-x86_64/` not signed yet (in place), and
//! the setup exe; then checks that all three carry a signature. The certificate comes from the
//! `CMS_SIGN_*` variables ([`crate::sign`]).
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
use crate::iscc_sign::{self, SignHook};
use crate::sign::{self, Signer};
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

/// `AppName` in the script: the install folder's name.
const APP_NAME: &str = "CMS Agent";

/// Where a per-machine install lands, relative to `C:\` (`{autopf}\<AppName>` in the script).
pub(crate) const APP_DIR: &str = "Program Files/CMS Agent";

/// The key of the autostart entry `cms_agent --enable-autostart` writes when elevated
/// (docs/CONTRACT.md).
const RUN_KEY: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run";
/// The autostart entry's value name.
const RUN_VALUE: &str = "CMSAgent";

/// Time limit for ISCC under Wine.
const ISCC_TIMEOUT: Duration = Duration::from_secs(600);
/// Time limit for one setup or uninstall run under Wine.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long Wine may take to wind down once the uninstaller is done.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo xtask installer [--version X.Y.Z] [--smoke-test] [--sign]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = util::take_value(&mut args, &["--version"])?;
    let smoke = util::take_switch(&mut args, "--smoke-test");
    let sign = util::take_switch(&mut args, "--sign");
    util::reject_rest("installer", &args)?;
    let signer = sign.then(Signer::from_env).transpose()?;
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
    let setup = compile(&version, signer)?;
    if smoke {
        smoke_test(&setup)?;
    }
    Ok(())
}

/// Prints the SKIPPED line and ends the process with [`SKIPPED_EXIT_CODE`].
pub(crate) fn skip(what: &str, reason: &str) -> ! {
    println!("SKIPPED: {what}: {reason}");
    std::process::exit(SKIPPED_EXIT_CODE)
}

/// The version `cargo xtask dist` wrote to `dist/VERSION`, else the workspace version.
pub(crate) fn dist_version() -> Result<String> {
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

/// Compiles the installer for `version`, signed when `signer` is given; returns the path of
/// the setup exe.
pub fn compile(version: &str, signer: Option<Signer>) -> Result<PathBuf> {
    let iscc = iscc_path()?;
    let prefix = wine::prepare_prefix("iscc")?;
    let dist = dist::dist_dir();
    let name = format!("cms_agent_setup-{version}");
    let mut cmd = prefix.command(&iscc);
    iscc_sign::without_secrets(&mut cmd);
    let hook = match signer {
        Some(signer) => {
            eprintln!("installer: signing: {}", signer.summary());
            let hook = SignHook::start(signer, &dist)?;
            hook.apply(&mut cmd);
            Some(hook)
        }
        None => None,
    };
    cmd.arg("/Q")
        .arg(format!("/DAppVersion={version}"))
        .arg(format!("/DDistDir={}", windows_path(&dist)))
        .arg(format!("/O{}", windows_path(&dist)))
        .arg(format!("/F{name}"))
        .arg(windows_path(&util::project_root().join(ISS)));
    let signing = hook.is_some();
    let started = Instant::now();
    let compiled = run_checked_timeout(&mut cmd, ISCC_TIMEOUT).context("ISCC failed");
    let signed = hook.map(SignHook::stop).transpose();
    compiled.and(signed)?;
    let setup = dist.join(format!("{name}.exe"));
    dist::require_file(&setup)?;
    if signing {
        require_signed(&setup)?;
    }
    eprintln!(
        "installer: {} in {:.0?}",
        setup.display(),
        started.elapsed()
    );
    Ok(setup)
}

/// Fails unless the setup exe and the programs it packs carry a signature.
fn require_signed(setup: &Path) -> Result<()> {
    let programs = dist::BINARIES
        .iter()
        .map(|(_, binary)| dist::dist_binary(&WINDOWS, binary));
    std::iter::once(setup.to_path_buf())
        .chain(programs)
        .try_for_each(|path| sign::require_signature(&path))
}

/// Silent installs of `setup` in throwaway prefixes, with checks: per machine (install,
/// upgrade over the running agent, uninstall) and per user (install, uninstall). Every check
/// runs and prints ok/FAIL; any failure fails the test.
pub fn smoke_test(setup: &Path) -> Result<()> {
    let display = match VirtualDisplay::start() {
        Ok(display) => display,
        Err(e) => skip(
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
    install(
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
    install(
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
    uninstall(&prefix, display, &app_dir, &[])?;
    check_uninstalled(checks, &prefix, &app_dir);
    checks.check("per machine: the data folder is kept (no /PURGE)", || {
        dist::require_file(&data)
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
    install(
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
    uninstall(&prefix, display, &app_dir, &["/PURGE"])?;
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
                log_tail(prefix, "setup-install.log")
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
                log_tail(prefix, "setup-uninstall.log")
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

/// Named checks that all run; failures are collected and reported together.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    failed: Vec<String>,
}

impl Checks {
    /// Runs one check and prints its outcome.
    pub(crate) fn check(&mut self, name: impl Into<String>, check: impl FnOnce() -> Result<()>) {
        let name = name.into();
        match check() {
            Ok(()) => eprintln!("  ok    {name}"),
            Err(e) => {
                eprintln!("  FAIL  {name}: {e:#}");
                self.failed.push(name);
            }
        }
    }

    /// Fails when any check failed.
    pub(crate) fn finish(self, what: &str) -> Result<()> {
        if !self.failed.is_empty() {
            bail!(
                "{what}: {} check(s) failed: {}",
                self.failed.len(),
                self.failed.join("; ")
            );
        }
        eprintln!("{what}: PASSED");
        Ok(())
    }
}

/// A backend URL where nothing listens: the agent the smoke test installs starts, fails to
/// register and retries.
pub(crate) const NO_SERVER: &str = "http://127.0.0.1:9";

/// `setup.exe /VERYSILENT /SUPPRESSMSGBOXES <mode> /SERVER=<server>`, logging to `C:\<log>`.
pub(crate) fn install(
    prefix: &WinePrefix,
    display: &VirtualDisplay,
    setup: &Path,
    mode: &str,
    log: &str,
    server: &str,
) -> Result<()> {
    let mut cmd = prefix.command(setup);
    cmd.env("DISPLAY", display.name())
        .args(["/VERYSILENT", "/SUPPRESSMSGBOXES", "/NORESTART", mode])
        .arg(format!("/LOG=C:\\{log}"))
        .arg(format!("/SERVER={server}"));
    if let Err(e) = run_checked_timeout(&mut cmd, SETUP_TIMEOUT) {
        bail!(
            "silent install ({mode}) failed: {e:#}\n{}",
            log_tail(prefix, log)
        );
    }
    Ok(())
}

/// Fails unless every one of `names` is a non-empty file in `dir`.
fn files_present(dir: &Path, names: &[&str]) -> Result<()> {
    names
        .iter()
        .try_for_each(|name| dist::require_file(&dir.join(name)))
}

/// A file in the agent's data folder `dir` (made if missing), to see what uninstall keeps.
fn plant_data(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join("smoke-test-data.txt");
    fs::write(&file, "made by the installer smoke test\n")
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// Runs the uninstaller silently (with `extra` switches) and waits until it has removed itself.
pub(crate) fn uninstall(
    prefix: &WinePrefix,
    display: &VirtualDisplay,
    app_dir: &Path,
    extra: &[&str],
) -> Result<()> {
    let uninstaller = app_dir.join("unins000.exe");
    let mut cmd = prefix.command(&uninstaller);
    cmd.env("DISPLAY", display.name())
        .args(["/VERYSILENT", "/SUPPRESSMSGBOXES", "/NORESTART"])
        .arg(r"/LOG=C:\setup-uninstall.log")
        .args(extra);
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
    // Nothing may be left running: the uninstaller stops the agent.
    prefix
        .wait_idle(IDLE_TIMEOUT)
        .context("a Windows program (the agent?) is still running after uninstall")
}

/// Fails unless the autostart value's presence is `expected`.
fn autostart_expect(prefix: &WinePrefix, expected: bool) -> Result<()> {
    match autostart_value(prefix)?.is_some() {
        found if found == expected => Ok(()),
        true => bail!("{RUN_KEY}\\{RUN_VALUE} is still there"),
        false => bail!("{RUN_KEY}\\{RUN_VALUE} is missing"),
    }
}

/// `reg query`'s report of the `CMSAgent` value under `HKLM\...\Run` in the prefix (it
/// holds the command line), or `None` when there is no such value.
pub(crate) fn autostart_value(prefix: &WinePrefix) -> Result<Option<String>> {
    let mut cmd = prefix.command("reg");
    // /reg:64: `wine reg` may be the 32-bit reg.exe, which would see the WOW6432Node view.
    cmd.args(["query", RUN_KEY, "/v", RUN_VALUE, "/reg:64"]);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", util::describe(&cmd)))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `result`, with the tail of the setup log `log` after the error when it failed.
fn with_log(result: Result<()>, prefix: &WinePrefix, log: &str) -> Result<()> {
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", log_tail(prefix, log)))
}

/// The last lines of an Inno Setup log in `C:\`, for error messages.
pub(crate) fn log_tail(prefix: &WinePrefix, name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_paths_map_to_wines_z_drive() {
        assert_eq!(
            windows_path(Path::new("/work/main/dist")),
            r"Z:\work\main\dist"
        );
    }
}
