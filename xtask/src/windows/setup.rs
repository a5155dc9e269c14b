//! The installer at work in a Wine prefix: `setup.exe` and its uninstaller run silently on a
//! virtual display, the autostart entry they leave, and their logs for error messages. The
//! installer smoke test and the Windows end-to-end run drive setups through it.
//!
//! Must never: run a setup outside a throwaway prefix ([`WinePrefix`]), or wait for one without
//! a time limit.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, run_checked_timeout};
use crate::windows::wine::{VirtualDisplay, WinePrefix};

/// `AppName` in the script: the install folder's name.
pub const APP_NAME: &str = "CMS Agent";

/// Where a per-machine install lands, relative to `C:\` (`{autopf}\<AppName>` in the script).
pub const APP_DIR: &str = "Program Files/CMS Agent";

/// The key of the autostart entry `cms_agent --enable-autostart` writes when elevated.
pub const RUN_KEY: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run";
/// The autostart entry's value name.
pub const RUN_VALUE: &str = "CMSAgent";

/// A backend URL where nothing listens: an agent installed with it starts, fails to register
/// and retries.
pub const NO_SERVER: &str = "http://127.0.0.1:9";

/// Time limit for one setup or uninstall run under Wine.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long Wine may take to wind down once the uninstaller is done.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `setup.exe /VERYSILENT /SUPPRESSMSGBOXES <mode> /SERVER=<server>`, logging to `C:\<log>`.
pub fn install(
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

/// Runs the uninstaller silently (with `extra` switches) and waits until it has removed itself.
pub fn uninstall(
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

/// `reg query`'s report of the `CMSAgent` value under `HKLM\...\Run` in the prefix (it
/// holds the command line), or `None` when there is no such value.
pub fn autostart_value(prefix: &WinePrefix) -> Result<Option<String>> {
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

/// The last lines of an Inno Setup log in `C:\`, for error messages.
pub fn log_tail(prefix: &WinePrefix, name: &str) -> String {
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
