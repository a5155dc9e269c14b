//! `cargo xtask dist [--version X.Y.Z] [--target windows|linux|all] [--sign]`: release binaries
//! in `dist/`.
//!
//! Cleans `dist/`, release-builds `cms_agent` and `updater` (workspace release profile) with
//! `CMS_BUILD_VERSION=X.Y.Z` (default: the workspace version), checks that every output exists
//! and carries the version (`--version` of the Linux build; the Windows build is stamped by the
//! same variable in the same way), and copies them. Layout, one folder per platform (the names
//! `cms-server release publish --platform` takes):
//!
//! ```text
//! dist/VERSION                         the version the binaries carry (read by `xtask installer`)
//! dist/windows-x86_64/cms_agent.exe
//! dist/windows-x86_64/updater.exe
//! dist/linux-x86_64/cms_agent
//! dist/linux-x86_64/updater
//! ```
//!
//! `--sign` Authenticode-signs the Windows exes in `dist/` in place ([`crate::sign`], certificate
//! from the `CMS_SIGN_*` variables, read before the build starts). The Linux binaries are not
//! signed: Authenticode is Windows-only.
//!
//! Must never: put anything in `dist/` that the release build did not produce (no config.json,
//! never the Wine test shim), or report success for a platform whose binaries are missing.

use crate::sign::Signer;
use crate::util::{self, run_checked};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A platform `dist` builds for.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// Folder name under `dist/` (also the release platform name).
    pub name: &'static str,
    /// Rust target triple.
    pub triple: &'static str,
    /// Executable suffix (`.exe` on Windows).
    pub exe_suffix: &'static str,
}

/// 64-bit Windows, cross-compiled with mingw.
pub const WINDOWS: Platform = Platform {
    name: "windows-x86_64",
    triple: crate::wine::WINDOWS_TARGET,
    exe_suffix: ".exe",
};

/// 64-bit Linux (glibc).
pub const LINUX: Platform = Platform {
    name: "linux-x86_64",
    triple: "x86_64-unknown-linux-gnu",
    exe_suffix: "",
};

/// The binaries shipped, as (cargo package, binary name).
pub const BINARIES: [(&str, &str); 2] = [("cms-agent", "cms_agent"), ("cms-updater", "updater")];

/// `cargo xtask dist [--version X.Y.Z] [--target windows|linux|all] [--sign]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = util::take_value(&mut args, &["--version"])?;
    let target = util::take_value(&mut args, &["--target"])?;
    let sign = util::take_switch(&mut args, "--sign");
    util::reject_rest("dist", &args)?;
    let version = version.unwrap_or_else(|| util::workspace_version().to_string());
    check_version(&version)?;
    let platforms = platforms(target.as_deref().unwrap_or("all"))?;
    let signer = match sign {
        true if !platforms.iter().any(|p| p.name == WINDOWS.name) => {
            bail!("--sign signs the Windows exes (Authenticode): use --target windows or all")
        }
        true => Some(Signer::from_env()?),
        false => None,
    };
    build(&version, &platforms, signer.as_ref())
}

/// The platforms named by `--target`.
fn platforms(target: &str) -> Result<Vec<Platform>> {
    Ok(match target {
        "windows" => vec![WINDOWS],
        "linux" => vec![LINUX],
        "all" => vec![WINDOWS, LINUX],
        other => bail!("--target must be windows, linux or all, not {other:?}"),
    })
}

/// Fails unless `version` is `X.Y.Z` with decimal numbers (what Inno Setup's version info takes).
pub fn check_version(version: &str) -> Result<()> {
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(numeric) {
        bail!("version must be X.Y.Z (decimal numbers), not {version:?}");
    }
    Ok(())
}

/// The `dist/` folder.
pub fn dist_dir() -> PathBuf {
    util::project_root().join("dist")
}

/// Where `binary` of `platform` lands in `dist/`.
pub fn dist_binary(platform: &Platform, binary: &str) -> PathBuf {
    dist_dir()
        .join(platform.name)
        .join(format!("{binary}{}", platform.exe_suffix))
}

/// Cleans `dist/`, builds every platform with `version` stamped in and copies the binaries;
/// with a `signer`, signs the Windows ones.
pub fn build(version: &str, platforms: &[Platform], signer: Option<&Signer>) -> Result<()> {
    let dist = dist_dir();
    util::remove_dir_if_exists(&dist)?;
    for platform in platforms {
        build_platform(version, platform)?;
        copy_platform(platform)?;
    }
    if let Some(signer) = signer {
        sign_windows(signer)?;
    }
    fs::write(dist.join("VERSION"), format!("{version}\n")).context("cannot write dist/VERSION")?;
    if platforms.iter().any(|p| p.name == LINUX.name) {
        verify_linux_versions(version)?;
    }
    eprintln!("dist: version {version} in {}", dist.display());
    Ok(())
}

/// `cargo build --release --target <triple>` of the shipped binaries.
fn build_platform(version: &str, platform: &Platform) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--target", platform.triple]);
    for (package, binary) in BINARIES {
        cmd.args(["-p", package, "--bin", binary]);
    }
    cmd.env("CMS_BUILD_VERSION", version);
    run_checked(&mut cmd).with_context(|| format!("release build for {} failed", platform.name))
}

/// Copies the built binaries of `platform` into `dist/<platform>/`, failing on a missing one.
fn copy_platform(platform: &Platform) -> Result<()> {
    let built = util::target_dir().join(platform.triple).join("release");
    let out = dist_dir().join(platform.name);
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (_, binary) in BINARIES {
        let name = format!("{binary}{}", platform.exe_suffix);
        let from = built.join(&name);
        require_file(&from)?;
        fs::copy(&from, out.join(&name))
            .with_context(|| format!("cannot copy {} to {}", from.display(), out.display()))?;
        eprintln!("dist: {}/{name}", platform.name);
    }
    Ok(())
}

/// Signs the Windows exes in `dist/` in place.
fn sign_windows(signer: &Signer) -> Result<()> {
    eprintln!("dist: signing: {}", signer.summary());
    for (_, binary) in BINARIES {
        signer.sign(&dist_binary(&WINDOWS, binary))?;
    }
    Ok(())
}

/// Fails unless `path` is a non-empty file.
pub fn require_file(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("missing {}", path.display()))?;
    if !meta.is_file() || meta.len() == 0 {
        bail!("{} is not a non-empty file", path.display());
    }
    Ok(())
}

/// Runs `--version` of each Linux binary in `dist/` and checks it names `version`.
fn verify_linux_versions(version: &str) -> Result<()> {
    for (_, binary) in BINARIES {
        let path = dist_binary(&LINUX, binary);
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

    #[test]
    fn versions_are_three_decimal_numbers() {
        assert!(check_version("1.2.3").is_ok());
        assert!(check_version("0.10.200").is_ok());
        for bad in ["1.2", "1.2.3.4", "1.2.x", "1..3", "1.2.3-rc1", "", "v1.2.3"] {
            assert!(check_version(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_name_the_platforms() -> Result<()> {
        assert_eq!(platforms("all")?.len(), 2);
        assert_eq!(platforms("windows")?[0].triple, "x86_64-pc-windows-gnu");
        assert!(platforms("mac").is_err());
        Ok(())
    }
}
