//! `cargo xtask dist [--version X.Y.Z] [--target windows|linux|all] [--sign]
//! [--trusted-root FILE]`: release binaries in `dist/` (layout and build steps:
//! [`crate::dist_tree`]).
//!
//! `--version` defaults to the workspace version; `--target` to `all` (on a Windows host to
//! `windows`: the Linux binaries need a Linux linker). `--sign` Authenticode-signs the Windows
//! exes in `dist/` in place ([`crate::signing::signer`], certificate from the `CMS_SIGN_*`
//! variables, read before the build starts). The Linux binaries are not signed: Authenticode
//! is Windows-only. `--trusted-root FILE` (the backend's `DIR/tuf/metadata/root.json`) is
//! checked before the build ([`crate::trusted_root`]) and copied beside the binaries as
//! `root.json`, for the installer to embed.
//!
//! Must never: start a build it cannot finish for lack of a signing certificate.

use anyhow::{Result, bail};

use crate::build::{LINUX, Platform, WINDOWS};
use crate::dist_tree;
use crate::flags;
use crate::signing::signer::Signer;
use crate::trusted_root::TrustedRoot;
use crate::version;

/// `cargo xtask dist [--version X.Y.Z] [--target windows|linux|all] [--sign]
/// [--trusted-root FILE]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = flags::take_value(&mut args, &["--version"])?;
    let target = flags::take_value(&mut args, &["--target"])?;
    let sign = flags::take_switch(&mut args, "--sign");
    let root = TrustedRoot::take_flag(&mut args)?;
    flags::reject_rest("dist", &args)?;
    let version = version.unwrap_or_else(|| version::workspace().to_string());
    version::check(&version)?;
    let platforms = platforms(target.as_deref().unwrap_or(DEFAULT_TARGET))?;
    let signer = match sign {
        true if !platforms.contains(&WINDOWS) => {
            bail!("--sign signs the Windows exes (Authenticode): use --target windows or all")
        }
        true => Some(Signer::from_env()?),
        false => None,
    };
    dist_tree::build(&version, &platforms, signer.as_ref())?;
    match root {
        Some(root) => dist_tree::add_trusted_root(&root, &platforms),
        None => Ok(()),
    }
}

/// `--target` when none is given: what this host can build (a Windows host has no Linux linker).
const DEFAULT_TARGET: &str = if LINUX.is_host { "all" } else { "windows" };

/// The platforms named by `--target`.
fn platforms(target: &str) -> Result<Vec<Platform>> {
    Ok(match target {
        "windows" => vec![WINDOWS],
        "linux" => vec![LINUX],
        "all" => vec![WINDOWS, LINUX],
        other => bail!("--target must be windows, linux or all, not {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_the_platforms() -> Result<()> {
        assert_eq!(platforms("all")?.len(), 2);
        assert_eq!(platforms("windows")?[0].triple, "x86_64-pc-windows-gnu");
        assert!(platforms("mac").is_err());
        Ok(())
    }
}
