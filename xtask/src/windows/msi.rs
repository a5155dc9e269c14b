//! `cargo xtask msi [--version X.Y.Z] [--sign]`: the Windows Installer package,
//! `dist/cms_agent-X.Y.Z-x64.msi`, for Intune, SCCM and Group Policy software installation
//! (the package: `build_scripts/cms_agent.wxs`, built by [`crate::windows::wixl`]).
//!
//! The version defaults to `dist/VERSION`; when `dist/` does not hold the Windows binaries of
//! that version they are built first, as `cargo xtask installer` does. `--sign`
//! Authenticode-signs the programs in `dist/windows-x86_64/` not signed yet (in place, before
//! they are packed) and then the MSI, with the certificate of the `CMS_SIGN_*` variables
//! ([`crate::signing::signer`]).
//!
//! Needs msitools (`wixl`, `msiinfo`, `msibuild`): Linux only in practice (Debian's `wixl
//! msitools`, installed by `.ci/windows-deps.sh`).
//!
//! Must never: build a package from binaries of another version than the one it is named for.

use std::path::Path;

use anyhow::Result;

use crate::build::WINDOWS;
use crate::dist_tree;
use crate::flags;
use crate::signing::signer::{self, Signer};
use crate::version;
use crate::windows::wixl;

/// `cargo xtask msi [--version X.Y.Z] [--sign]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let version = flags::take_value(&mut args, &["--version"])?;
    let sign = flags::take_switch(&mut args, "--sign");
    flags::reject_rest("msi", &args)?;
    wixl::require_tools()?;
    let signer = sign.then(Signer::from_env).transpose()?;
    let version = match version {
        Some(v) => v,
        None => dist_tree::version()?,
    };
    version::check(&version)?;
    if !dist_tree::holds(&WINDOWS, &version) {
        eprintln!(
            "msi: dist/ does not hold the Windows {version} binaries: building them \
             (as cargo xtask dist --target windows --version {version})"
        );
        dist_tree::build(&version, &[WINDOWS], None)?;
    }
    let agent = dist_tree::binary(&WINDOWS, "cms_agent");
    let updater = dist_tree::binary(&WINDOWS, "updater");
    if let Some(signer) = &signer {
        eprintln!("msi: signing: {}", signer.summary());
        for program in [&agent, &updater] {
            sign_unless_signed(signer, program)?;
        }
    }
    let msi = wixl::build(&version, &agent, &updater, &dist_tree::msi(&version))?;
    if let Some(signer) = &signer {
        signer.sign(&msi)?;
    }
    Ok(())
}

/// Signs the PE file `program` in place unless it carries a signature already (`dist --sign`).
fn sign_unless_signed(signer: &Signer, program: &Path) -> Result<()> {
    match signer::require_signature(program) {
        Ok(()) => Ok(()),
        Err(_) => signer.sign(program),
    }
}
