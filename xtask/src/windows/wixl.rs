//! The Windows Installer package built with msitools' `wixl` from
//! `build_scripts/cms_agent.wxs` into `dist/cms_agent-X.Y.Z-x64.msi`, and its tables read back
//! with `msiinfo` (for the checks).
//!
//! How: the files it packs (`cms_agent.exe`, `updater.exe` and
//! `build_scripts/installed-by-msi.txt`) are copied into a staging folder, where wixl reads
//! them (it takes `Source` relative to its working directory); then `msibuild` patches what
//! wixl has no syntax for: the HideTarget bit of the custom action that passes the enrollment
//! token and the proxy ([`HIDDEN_TARGET_ACTION`]; the command line it formats is then never
//! logged), and the public properties made secure (passed to the elevated part of a managed
//! install, [`PUBLIC_PROPERTIES`]). One source serves Linux only: WiX's `candle`/`light` on a
//! Windows host would need the WiX toolset and a second build path; the release MSI is built
//! on the Linux build machine like the rest of `dist/`.
//!
//! Must never: pack anything but the two release programs and the marker, or leave a package
//! whose secret-passing action would be logged.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util;

/// The WiX source, relative to the workspace root.
pub const WXS: &str = "build_scripts/cms_agent.wxs";

/// The marker file the MSI installs beside the agent (the agent leaves updates to the MSI).
pub const MARKER: &str = "installed-by-msi.txt";

/// The MSI's UpgradeCode: stable across versions, or a newer MSI installs beside the old.
pub const UPGRADE_CODE: &str = "{6B0C7C3E-2F0A-4E55-9C4B-5B6A8E0A1D28}";

/// The public properties an administrator sets on msiexec's command line.
pub const PUBLIC_PROPERTIES: [&str; 10] = [
    "SERVER",
    "ENROLLMENTTOKEN",
    "TRUSTEDROOT",
    "CACERT",
    "PROXY",
    "GROUP",
    "DOWNLOADLIMIT",
    "METERED",
    "NOSTART",
    "REMOVEDATA",
];

/// The custom action whose formatted command line carries the token and the proxy.
pub const HIDDEN_TARGET_ACTION: &str = "EnableAutostart";

/// msidbCustomActionTypeHideTarget: the action's target is not written to the log.
pub const HIDE_TARGET: u32 = 0x2000;

/// Time limit for one wixl run (a 20 MB cabinet takes seconds).
const WIXL_TIMEOUT: Duration = Duration::from_secs(300);

/// The MSI's file name for `version`.
pub fn file_name(version: &str) -> String {
    format!("cms_agent-{version}-x64.msi")
}

/// Fails with what to install when wixl or msiinfo is missing.
pub fn require_tools() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in ["wixl", "msiinfo", "msibuild"] {
        if util::find_on_path(&path, tool).is_none() {
            bail!("{tool} not found: install msitools (Debian: apt-get install wixl msitools)");
        }
    }
    Ok(())
}

/// Builds the MSI for `version` from `agent` and `updater` into `out`; returns `out`.
pub fn build(version: &str, agent: &Path, updater: &Path, out: &Path) -> Result<PathBuf> {
    require_tools()?;
    let staging = out.with_extension("staging");
    util::remove_dir_if_exists(&staging)?;
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let marker = util::project_root().join("build_scripts").join(MARKER);
    for (from, name) in [
        (agent, "cms_agent.exe"),
        (updater, "updater.exe"),
        (&marker, MARKER),
    ] {
        util::require_file(from)?;
        fs::copy(from, staging.join(name)).with_context(|| {
            format!("cannot copy {} into {}", from.display(), staging.display())
        })?;
    }
    let result = compile(version, &staging, out).and_then(|()| patch(out));
    util::remove_dir_if_exists(&staging)?;
    result?;
    eprintln!("msi: {}", out.display());
    Ok(out.to_path_buf())
}

/// wixl on the source, in `staging`.
fn compile(version: &str, staging: &Path, out: &Path) -> Result<()> {
    let wxs = util::project_root().join(WXS);
    let _ = fs::remove_file(out);
    let mut cmd = Command::new("wixl");
    cmd.current_dir(staging)
        .args(["-a", "x64", "-D"])
        .arg(format!("Version={version}"))
        .arg("-o")
        .arg(out)
        .arg(&wxs);
    util::run_checked_timeout(&mut cmd, WIXL_TIMEOUT)?;
    // wixl prints GLib warnings for attributes it ignores and still exits 0 on some errors.
    util::require_file(out).context("wixl made no MSI")
}

/// What wixl cannot say: the hidden target and the secure public properties.
fn patch(msi: &Path) -> Result<()> {
    let action = table(msi, "CustomAction")?;
    let row = action
        .row(HIDDEN_TARGET_ACTION)
        .with_context(|| format!("no custom action {HIDDEN_TARGET_ACTION} in {WXS}"))?;
    let kind: u32 = row
        .get(1)
        .and_then(|t| t.parse().ok())
        .context("CustomAction.Type is not a number")?;
    msibuild_query(
        msi,
        &format!(
            "UPDATE `CustomAction` SET `Type` = {} WHERE `Action` = '{HIDDEN_TARGET_ACTION}'",
            kind | HIDE_TARGET
        ),
    )?;
    let properties = table(msi, "Property")?;
    if properties.value("UpgradeCode") != Some(UPGRADE_CODE) {
        bail!("{WXS} must keep the UpgradeCode {UPGRADE_CODE}, or upgrades install side by side");
    }
    let mut secure: Vec<String> = properties
        .value("SecureCustomProperties")
        .map(|v| v.split(';').map(str::to_owned).collect())
        .unwrap_or_default();
    secure.extend(PUBLIC_PROPERTIES.iter().map(|p| p.to_string()));
    let query = match properties.value("SecureCustomProperties") {
        Some(_) => format!(
            "UPDATE `Property` SET `Value` = '{}' WHERE `Property` = 'SecureCustomProperties'",
            secure.join(";")
        ),
        None => format!(
            "INSERT INTO `Property` (`Property`, `Value`) VALUES ('SecureCustomProperties', '{}')",
            secure.join(";")
        ),
    };
    msibuild_query(msi, &query)
}

fn msibuild_query(msi: &Path, query: &str) -> Result<()> {
    util::run_checked(Command::new("msibuild").arg(msi).arg("-q").arg(query))
}

/// One table of an MSI as `msiinfo export` prints it: rows of tab-separated fields (the three
/// header lines left out).
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// The row whose first field (the key) is `key`.
    pub fn row(&self, key: &str) -> Option<&[String]> {
        self.rows
            .iter()
            .find(|r| r.first().is_some_and(|k| k == key))
            .map(Vec::as_slice)
    }

    /// The second field of the row keyed `key` (a property's value).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.row(key)?.get(1).map(String::as_str)
    }

    /// Every row.
    #[cfg(test)]
    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }
}

/// `msiinfo export MSI TABLE`, parsed.
pub fn table(msi: &Path, name: &str) -> Result<Table> {
    let text = util::output_checked(Command::new("msiinfo").arg("export").arg(msi).arg(name))?;
    let rows = text
        .lines()
        .skip(3)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    Ok(Table { rows })
}

#[cfg(test)]
mod tests {
    //! The package's tables, from a build with dummy programs: no dist/ needed, only msitools
    //! (`CMS_REQUIRE_MSITOOLS=1`, set by `.ci/run`, which installs them, makes their absence a
    //! failure).

    use super::*;

    /// A package of `version` built from stand-in programs into a fresh folder.
    fn dummy_msi(version: &str) -> Result<Option<(PathBuf, PathBuf)>> {
        if let Err(e) = require_tools() {
            if std::env::var("CMS_REQUIRE_MSITOOLS").is_ok_and(|v| v == "1") {
                return Err(e.context("CMS_REQUIRE_MSITOOLS=1"));
            }
            eprintln!("SKIPPED: {e:#} (CMS_REQUIRE_MSITOOLS=1 makes this a failure)");
            return Ok(None);
        }
        let dir = util::target_dir()
            .join("tmp")
            .join(format!("msi-test-{}", util::random_hex()?));
        fs::create_dir_all(&dir)?;
        let (agent, updater) = (dir.join("agent.exe"), dir.join("updater.exe"));
        fs::write(&agent, b"MZ stand-in agent")?;
        fs::write(&updater, b"MZ stand-in updater")?;
        let msi = build(version, &agent, &updater, &dir.join(file_name(version)))?;
        Ok(Some((dir, msi)))
    }

    #[test]
    fn the_msi_has_the_contracts_properties_actions_and_sequence() -> Result<()> {
        let Some((dir, msi)) = dummy_msi("1.2.3")? else {
            return Ok(());
        };
        let properties = table(&msi, "Property")?;
        assert_eq!(properties.value("UpgradeCode"), Some(UPGRADE_CODE));
        assert_eq!(properties.value("ProductVersion"), Some("1.2.3"));
        assert_eq!(properties.value("ALLUSERS"), Some("1"));
        let hidden: Vec<&str> = properties
            .value("MsiHiddenProperties")
            .context("no MsiHiddenProperties")?
            .split(';')
            .collect();
        for secret in ["ENROLLMENTTOKEN", "PROXY", "TOKENARG", "PROXYARG"] {
            assert!(hidden.contains(&secret), "{secret} not hidden: {hidden:?}");
        }
        let secure = properties.value("SecureCustomProperties").unwrap_or("");
        for public in PUBLIC_PROPERTIES {
            assert!(secure.split(';').any(|p| p == public), "{public}: {secure}");
        }
        check_actions(&msi)?;
        check_sequence(&msi)?;
        check_files_and_inno_guard(&msi)?;
        util::remove_dir_if_exists(&dir)
    }

    /// The service comes from the agent's own `--enable-autostart`, deferred, as LocalSystem,
    /// with its command line never logged; `--disable-autostart` removes it.
    fn check_actions(msi: &Path) -> Result<()> {
        let actions = table(msi, "CustomAction")?;
        let enable = actions
            .row(HIDDEN_TARGET_ACTION)
            .context("no EnableAutostart")?;
        let kind: u32 = enable[1].parse()?;
        // 18: an exe installed by this package; 0x400 deferred; 0x800 not impersonated.
        assert_eq!(kind & 0x3f, 18, "{enable:?}");
        assert_eq!(
            kind & (0x400 | 0x800 | HIDE_TARGET),
            0x400 | 0x800 | HIDE_TARGET
        );
        assert_eq!(enable[2], "cms_agent.exe");
        for arg in [
            "--enable-autostart",
            "[SERVERARG]",
            "[TOKENARG]",
            "[PROXYARG]",
        ] {
            assert!(enable[3].contains(arg), "{arg} missing: {}", enable[3]);
        }
        let disable = actions
            .row("DisableAutostart")
            .context("no DisableAutostart")?;
        assert_eq!(disable[3], "--disable-autostart");
        let set_token = actions.row("SetTokenArg").context("no SetTokenArg")?;
        assert_eq!(set_token[2], "TOKENARG");
        assert!(set_token[3].contains("[ENROLLMENTTOKEN]"));
        Ok(())
    }

    /// Each action where it must be, by sequence number and condition.
    fn check_sequence(msi: &Path) -> Result<()> {
        let sequence = table(msi, "InstallExecuteSequence")?;
        let at = |action: &str| -> Result<(String, u32)> {
            let row = sequence
                .row(action)
                .with_context(|| format!("{action} not sequenced"))?;
            Ok((row[1].clone(), row[2].parse()?))
        };
        let (_, install_files) = at("InstallFiles")?;
        let (_, stop_services) = at("StopServices")?;
        let (_, remove_files) = at("RemoveFiles")?;
        let (_, initialize) = at("InstallInitialize")?;
        let (enable_when, enable) = at("EnableAutostart")?;
        let (start_when, start) = at("StartAgent")?;
        let (disable_when, disable) = at("DisableAutostart")?;
        let (purge_when, purge) = at("RemoveData")?;
        let (_, upgrade) = at("RemoveExistingProducts")?;
        assert!(enable > install_files && start > enable, "{enable} {start}");
        assert!(disable > stop_services && disable < remove_files);
        assert!(purge > remove_files && upgrade > initialize);
        assert!(enable_when.contains(r#"NOT REMOVE~="ALL""#));
        assert!(start_when.contains("NOT NOSTART"));
        let (restart_when, restart) = at("RestartAgent")?;
        assert!(restart > enable && restart_when.starts_with("Installed AND"));
        assert!(disable_when.contains("NOT UPGRADINGPRODUCTCODE"));
        assert!(purge_when.contains(r#"REMOVEDATA="1""#));
        assert!(purge_when.contains("NOT UPGRADINGPRODUCTCODE"));
        let control = table(msi, "ServiceControl")?;
        assert!(
            control.rows().iter().any(|r| r[1] == "CMSAgent"),
            "no ServiceControl stops CMSAgent"
        );
        Ok(())
    }

    /// The three files, into Program Files\CMS Agent, and the refusal over Inno Setup.
    fn check_files_and_inno_guard(msi: &Path) -> Result<()> {
        let files = table(msi, "File")?;
        let mut names: Vec<&str> = files.rows().iter().map(|r| r[2].as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cms_agent.exe", MARKER, "updater.exe"]);
        let dirs = table(msi, "Directory")?;
        assert!(
            dirs.rows().iter().any(|r| r[0] == "INSTALLDIR"
                && r[1] == "ProgramFiles64Folder"
                && r[2].ends_with("CMS Agent")),
            "{:?}",
            dirs.rows()
        );
        let locator = table(msi, "RegLocator")?;
        let inno = locator.row("InnoUninstallKey").context("no Inno search")?;
        assert!(inno[2].ends_with("{D1C8D198-37BA-40D3-874D-19DD92FF86D8}_is1"));
        let conditions = table(msi, "LaunchCondition")?;
        let refuse = conditions
            .row("Installed OR NOT INNOINSTALL")
            .context("no launch condition on the Inno Setup install")?;
        assert!(refuse[1].contains("Uninstall that first"), "{refuse:?}");
        Ok(())
    }
}
