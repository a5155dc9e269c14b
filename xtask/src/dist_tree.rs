//! The `dist/` folder: where the shipped files are, and how they are made. `cargo xtask dist`
//! makes it, `cargo xtask installer` reads it (and makes it when it is missing), the other
//! tasks take the shipped binaries from it. Layout, one folder per platform (the names
//! `cms-server release publish --platform` takes):
//!
//! ```text
//! dist/VERSION                         the version the binaries carry (read by `xtask installer`)
//! dist/windows-x86_64/cms_agent.exe
//! dist/windows-x86_64/updater.exe
//! dist/windows-x86_64/root.json        the backend's TUF root, with `--trusted-root` only
//! dist/linux-x86_64/cms_agent
//! dist/linux-x86_64/updater
//! dist/linux-x86_64/root.json          the same root
//! dist/cms_agent_setup-X.Y.Z.exe       the installer (`cargo xtask installer`)
//! dist/cms_agent-X.Y.Z-x64.msi         the MSI package (`cargo xtask msi`)
//! dist/policy/cmsagent.admx            the Group Policy template (with Windows), and
//! dist/policy/en-US/cmsagent.adml      its English strings, from build_scripts/policy/
//! ```
//!
//! Making it: clean `dist/`, release-build `cms_agent` and `updater` (workspace release
//! profile) for each platform with `CMS_BUILD_VERSION=X.Y.Z`, check that every output exists,
//! copy it, sign the Windows exes when asked, and check the version of the binaries this machine
//! can run (`--version`; the others are stamped by the same variable in the same way).
//!
//! With `--trusted-root FILE` (`cargo xtask dist` and `installer`), the backend's TUF root,
//! checked ([`crate::trusted_root`]), goes beside the binaries as `root.json`; the installer
//! embeds it when it is there.
//!
//! Must never: put anything in `dist/` that the release build did not produce but a checked
//! TUF root (no config.json, never the Wine test shim), or report success for a platform whose
//! binaries are missing.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build::{Platform, SHIPPED, StampedBuild, WINDOWS};
use crate::signing::signer::Signer;
use crate::trusted_root::{self, TrustedRoot};
use crate::util;
use crate::version;

/// The `dist/` folder.
pub fn dir() -> PathBuf {
    util::project_root().join("dist")
}

/// Where `binary` of `platform` lands in `dist/`.
pub fn binary(platform: &Platform, binary: &str) -> PathBuf {
    dir().join(platform.name).join(platform.exe(binary))
}

/// Where the backend's TUF root for `platform` lies in `dist/` (when it was given).
pub fn trusted_root(platform: &Platform) -> PathBuf {
    dir().join(platform.name).join(trusted_root::FILE_NAME)
}

/// Puts `root` beside the binaries of each of `platforms`.
pub fn add_trusted_root(root: &TrustedRoot, platforms: &[Platform]) -> Result<()> {
    for platform in platforms {
        let path = trusted_root(platform);
        root.write_to(&path)?;
        eprintln!(
            "dist: {} (TUF root version {}, from {})",
            path.display(),
            root.version(),
            root.source().display()
        );
    }
    Ok(())
}

/// Where the installer for `version` lands.
pub fn setup_exe(version: &str) -> PathBuf {
    dir().join(format!("{}.exe", setup_name(version)))
}

/// Where the MSI for `version` lands (`cargo xtask msi`).
pub fn msi(version: &str) -> PathBuf {
    dir().join(crate::windows::wixl::file_name(version))
}

/// The installer's file name without `.exe`.
pub fn setup_name(version: &str) -> String {
    format!("cms_agent_setup-{version}")
}

/// The version in `dist/VERSION`, else the workspace version.
pub fn version() -> Result<String> {
    let path = dir().join("VERSION");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(version::workspace().to_string()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Fails unless `dist/` holds the shipped binaries of `platform`.
pub fn require(platform: &Platform) -> Result<()> {
    SHIPPED
        .iter()
        .try_for_each(|(_, name)| util::require_file(&binary(platform, name)))
}

/// Whether `dist/` holds the shipped binaries of `platform`, stamped `version`.
pub fn holds(platform: &Platform, version: &str) -> bool {
    let stamped = fs::read_to_string(dir().join("VERSION")).is_ok_and(|v| v.trim() == version);
    stamped && require(platform).is_ok()
}

/// Cleans `dist/`, builds every platform with `version` stamped in and copies the binaries;
/// with a `signer`, signs the Windows ones.
pub fn build(version: &str, platforms: &[Platform], signer: Option<&Signer>) -> Result<()> {
    version::check(version)?;
    let dist = dir();
    util::remove_dir_if_exists(&dist)?;
    for platform in platforms {
        build_platform(version, platform)?;
    }
    if platforms.contains(&WINDOWS) {
        copy_policy_templates()?;
    }
    if let Some(signer) = signer {
        sign_windows(signer)?;
    }
    fs::write(dist.join("VERSION"), format!("{version}\n")).context("cannot write dist/VERSION")?;
    for platform in platforms.iter().filter(|p| p.is_host) {
        verify_versions(platform, version)?;
    }
    eprintln!("dist: version {version} in {}", dist.display());
    Ok(())
}

/// The Group Policy templates (`build_scripts/policy/`: `cmsagent.admx`, `en-US/cmsagent.adml`),
/// copied into `dist/policy/`.
fn copy_policy_templates() -> Result<()> {
    let source = util::project_root().join("build_scripts/policy");
    for file in POLICY_TEMPLATES {
        let (from, to) = (source.join(file), dir().join("policy").join(file));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        eprintln!("dist: {}", to.display());
    }
    Ok(())
}

/// The Group Policy template files, relative to `build_scripts/policy/` and `dist/policy/`.
const POLICY_TEMPLATES: [&str; 2] = ["cmsagent.admx", "en-US/cmsagent.adml"];

/// Release-builds `platform`'s binaries and copies them into `dist/<platform>/`.
fn build_platform(version: &str, platform: &Platform) -> Result<()> {
    let built = StampedBuild::new(version)
        .release()
        .platform(*platform)
        .run()
        .with_context(|| format!("release build for {} failed", platform.name))?;
    let copied = built.copy_to(&dir().join(platform.name))?;
    for program in [&copied.agent, &copied.updater] {
        eprintln!("dist: {}", program.display());
    }
    Ok(())
}

/// Signs the Windows exes in `dist/` in place.
fn sign_windows(signer: &Signer) -> Result<()> {
    eprintln!("dist: signing: {}", signer.summary());
    for (_, name) in SHIPPED {
        signer.sign(&binary(&WINDOWS, name))?;
    }
    Ok(())
}

/// Runs `--version` of each of `platform`'s binaries in `dist/` and checks it names `version`.
fn verify_versions(platform: &Platform, version: &str) -> Result<()> {
    for (_, name) in SHIPPED {
        let path = binary(platform, name);
        let out = util::output_checked(Command::new(&path).arg("--version"))?;
        if !out.split_whitespace().any(|word| word == version) {
            bail!(
                "{} --version says {:?}, not {version}",
                path.display(),
                out.trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy values the agent's rules table knows (`name: "X"` in core/policy.rs).
    fn agent_policy_names() -> Result<Vec<String>> {
        let path = util::project_root().join("crates/agent/src/core/policy.rs");
        let code = fs::read_to_string(&path)?;
        Ok(code
            .split("name: \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_owned))
            .collect())
    }

    #[test]
    fn the_admx_offers_exactly_the_policy_values_the_agent_takes() -> Result<()> {
        let root = util::project_root().join("build_scripts/policy");
        let admx = fs::read_to_string(root.join(POLICY_TEMPLATES[0]))?;
        let adml = fs::read_to_string(root.join(POLICY_TEMPLATES[1]))?;
        let mut offered: Vec<String> = admx
            .split("valueName=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_owned))
            .collect();
        let mut taken = agent_policy_names()?;
        offered.sort();
        taken.sort();
        assert_eq!(offered, taken);
        assert_eq!(taken.len(), 6, "{taken:?}");
        for name in &taken {
            for id in [
                format!("<string id=\"{name}\">"),
                format!("<presentation id=\"{name}\">"),
            ] {
                assert!(adml.contains(&id), "the ADML lacks {id}");
            }
            assert!(admx.contains(r#"key="SOFTWARE\Policies\CMSAgent""#));
        }
        Ok(())
    }
}
