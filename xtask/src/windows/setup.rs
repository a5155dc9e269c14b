//! The installer at work in a Wine prefix: `setup.exe` and its uninstaller run silently on a
//! virtual display, the autostart entry they leave (the service `CMSAgent` per machine, the
//! HKCU `Run` value per user, read back from the registry), and their logs for error messages.
//! The installer smoke test and the Windows end-to-end run drive setups through it.
//!
//! Must never: run a setup outside a throwaway prefix ([`WinePrefix`]), or wait for one without
//! a time limit.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, run_checked_timeout};
use crate::windows::wine::{VirtualDisplay, WinePrefix};

/// `AppName` in the script: the install folder's name.
pub const APP_NAME: &str = "CMS Agent";

/// Where a per-machine install lands, relative to `C:\` (`{autopf}\<AppName>` in the script).
pub const APP_DIR: &str = "Program Files/CMS Agent";

/// The key of a per-user autostart entry, and where older versions wrote the machine-wide one
/// (docs/CONTRACT.md).
const RUN_KEY: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";
/// The autostart entry's value name.
const RUN_VALUE: &str = "CMSAgent";
/// The per-machine agent's service, as the registry holds its configuration.
const SERVICE_KEY: &str = r"HKLM\System\CurrentControlSet\Services\CMSAgent";

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

/// Which `Run` key.
#[derive(Debug, Clone, Copy)]
pub enum Hive {
    /// HKLM: where older versions put the machine-wide entry.
    Machine,
    /// HKCU: the per-user entry.
    User,
}

impl Hive {
    fn key(self) -> String {
        let hive = match self {
            Hive::Machine => "HKLM",
            Hive::User => "HKCU",
        };
        format!(r"{hive}\{RUN_KEY}")
    }
}

/// Fails unless the `Run` value's presence is `expected`.
pub fn run_value_expect(prefix: &WinePrefix, hive: Hive, expected: bool) -> Result<()> {
    match autostart_value(prefix, hive)?.is_some() {
        found if found == expected => Ok(()),
        true => bail!("{}\\{RUN_VALUE} is still there", hive.key()),
        false => bail!("{}\\{RUN_VALUE} is missing", hive.key()),
    }
}

/// `reg query`'s report of the `CMSAgent` value under `...\Run` in the prefix (it holds the
/// command line), or `None` when there is no such value.
pub fn autostart_value(prefix: &WinePrefix, hive: Hive) -> Result<Option<String>> {
    reg_query(prefix, &[&hive.key(), "/v", RUN_VALUE])
}

/// `reg query ARGS /reg:64` in the prefix; `None` when the key or value does not exist.
pub fn reg_query(prefix: &WinePrefix, args: &[&str]) -> Result<Option<String>> {
    let mut cmd = prefix.command("reg");
    // /reg:64: `wine reg` may be the 32-bit reg.exe, which would see the WOW6432Node view.
    cmd.arg("query").args(args).arg("/reg:64");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", util::describe(&cmd)))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `reg add KEY /v VALUE /t REG_BINARY /d HEX /f /reg:64` in the prefix.
pub fn reg_add_binary(prefix: &WinePrefix, key: &str, value: &str, data: &[u8]) -> Result<()> {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = prefix.command("reg");
    cmd.args(["add", key, "/v", value, "/t", "REG_BINARY", "/d", &hex])
        .args(["/f", "/reg:64"]);
    util::run_checked(&mut cmd)
}

/// `reg add KEY /v VALUE /t REG_SZ /d DATA /f /reg:64` in the prefix.
pub fn reg_add(prefix: &WinePrefix, key: &str, value: &str, data: &str) -> Result<()> {
    let mut cmd = prefix.command("reg");
    cmd.args(["add", key, "/v", value, "/t", "REG_SZ", "/d", data])
        .args(["/f", "/reg:64"]);
    util::run_checked(&mut cmd)
}

/// `reg delete KEY /f /reg:64` in the prefix: the key and everything in it.
pub fn reg_delete_key(prefix: &WinePrefix, key: &str) -> Result<()> {
    let mut cmd = prefix.command("reg");
    cmd.args(["delete", key, "/f", "/reg:64"]);
    util::run_checked(&mut cmd)
}

/// `reg delete KEY /v VALUE /f /reg:64` in the prefix.
pub fn reg_delete(prefix: &WinePrefix, key: &str, value: &str) -> Result<()> {
    let mut cmd = prefix.command("reg");
    cmd.args(["delete", key, "/v", value, "/f", "/reg:64"]);
    util::run_checked(&mut cmd)
}

/// The service `CMSAgent`'s configuration as the registry holds it (`ImagePath`, `Start`,
/// `ObjectName`, ...), `None` when it is not installed.
fn service_config(prefix: &WinePrefix) -> Result<Option<String>> {
    reg_query(prefix, &[SERVICE_KEY])
}

/// Fails unless the service is installed as `expected`; installed means running
/// `cms_agent.exe --service` as LocalSystem with automatic start (`Start` 2).
pub fn service_expect(prefix: &WinePrefix, expected: bool) -> Result<()> {
    let config = service_config(prefix)?;
    match (config, expected) {
        (None, false) => Ok(()),
        (Some(config), false) => bail!("the service is still there:\n{config}"),
        (None, true) => bail!("no service CMSAgent ({SERVICE_KEY})"),
        (Some(config), true) => {
            let image = reg_value(&config, "ImagePath").unwrap_or_default();
            let fits = image.contains(r#"cms_agent.exe" --service"#)
                && reg_value(&config, "ObjectName") == Some("LocalSystem")
                && reg_value(&config, "Start") == Some("0x2");
            match fits {
                true => Ok(()),
                false => bail!("not a LocalSystem auto-start `cms_agent.exe --service`:\n{config}"),
            }
        }
    }
}

/// The data of value `name` in `reg query` output (`    NAME    REG_TYPE    DATA`).
fn reg_value<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let mut words = line.trim().splitn(3, "    ");
        (words.next()? == name).then_some(())?;
        words.next()?;
        Some(words.next()?.trim())
    })
}

/// Whether the per-user agent's IPC secret (the generic credential `CMSAgent/ipc/user`) is in
/// the prefix's Credential Manager (Wine keeps it under `HKCU\Software\Wine\Credential Manager`).
pub fn user_credential_present(prefix: &WinePrefix) -> Result<bool> {
    let listing = reg_query(prefix, &[r"HKCU\Software\Wine\Credential Manager", "/s"])?;
    Ok(listing.is_some_and(|l| l.contains("CMSAgent/ipc/user")))
}

/// Fails unless the setup log `log` contains `text`.
pub fn log_says(prefix: &WinePrefix, log: &str, text: &str) -> Result<()> {
    let path = prefix.drive_c().join(log);
    let content =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    match content.contains(text) {
        true => Ok(()),
        false => bail!(
            "{} does not say {text:?}\n{}",
            path.display(),
            log_tail(prefix, log)
        ),
    }
}

/// Where a per-user install lands: `C:\users\<user>\AppData\Local\Programs\CMS Agent`.
pub fn per_user_app_dir(prefix: &WinePrefix) -> Result<PathBuf> {
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

/// The per-user agent's data folder: `C:\users\<user>\AppData\Local\CMSAgent`, beside the
/// per-user install's `Programs`.
pub fn per_user_data_dir(prefix: &WinePrefix) -> Result<PathBuf> {
    let app_dir = per_user_app_dir(prefix)?;
    let local = app_dir
        .ancestors()
        .nth(2)
        .with_context(|| format!("{} has no AppData/Local", app_dir.display()))?;
    Ok(local.join("CMSAgent"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reg_query_output_is_read_by_value_name() {
        let output = "\nHKEY_LOCAL_MACHINE\\System\\CurrentControlSet\\Services\\CMSAgent\n    \
            ImagePath    REG_SZ    \"C:\\Program Files\\CMS Agent\\cms_agent.exe\" --service\n    \
            Start    REG_DWORD    0x2\n";
        assert_eq!(reg_value(output, "Start"), Some("0x2"));
        assert_eq!(
            reg_value(output, "ImagePath"),
            Some(r#""C:\Program Files\CMS Agent\cms_agent.exe" --service"#)
        );
        assert_eq!(reg_value(output, "ObjectName"), None);
    }
}
