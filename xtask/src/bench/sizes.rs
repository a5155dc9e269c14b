//! What the product weighs on disk: agent, updater, installer and update package, per platform,
//! as `cargo xtask dist` / `installer` / `cms-server release publish` produce them.
//!
//! A file that cannot be produced on this machine (no Windows lane tools, no 32-bit Wine for
//! Inno Setup, no Linux installer at all) is listed with the reason, never left out silently.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::fixture;
use super::plan::Plan;
use crate::build::{LINUX, Platform, WINDOWS};
use crate::dist_tree;
use crate::server::Release;
use crate::windows::inno;

/// One platform's files.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformSizes {
    /// `linux-x86_64` or `windows-x86_64`.
    pub platform: String,
    /// Bytes, or why there is no figure.
    pub agent: Size,
    /// See `agent`.
    pub updater: Size,
    /// See `agent`.
    pub installer: Size,
    /// The zip `release publish` makes of agent + updater (what an update downloads).
    pub update_package: Size,
}

/// A file's size, or why it was not measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// Size in bytes.
    Bytes(u64),
    /// Not measured, and why.
    NotMeasured(String),
}

/// Sizes of the release build in `dist/` (full runs only).
pub fn measure(plan: &Plan) -> Result<Vec<PlatformSizes>> {
    let mut sizes = vec![platform(plan, &LINUX, no_linux_installer())?];
    if plan.bins.windows_built {
        let installer = windows_installer(&plan.bins.current.version);
        sizes.push(platform(plan, &WINDOWS, installer)?);
    } else {
        let why = Size::NotMeasured(
            "the Windows lane's tools are not installed (bash .ci/windows-deps.sh) or --no-windows was given".into(),
        );
        sizes.push(PlatformSizes {
            platform: WINDOWS.name.into(),
            agent: why.clone(),
            updater: why.clone(),
            installer: why.clone(),
            update_package: why,
        });
    }
    Ok(sizes)
}

fn platform(plan: &Plan, platform: &Platform, installer: Size) -> Result<PlatformSizes> {
    let agent = dist_tree::binary(platform, "cms_agent");
    let updater = dist_tree::binary(platform, "updater");
    Ok(PlatformSizes {
        platform: platform.name.into(),
        agent: size_of(&agent),
        updater: size_of(&updater),
        installer,
        update_package: package_size(plan, platform, &agent, &updater)?,
    })
}

fn no_linux_installer() -> Size {
    Size::NotMeasured("there is no Linux installer; Linux machines get the two executables".into())
}

/// Compiles the Inno Setup installer (as `cargo xtask installer` does) and sizes it.
fn windows_installer(version: &str) -> Size {
    if let Err(reason) = inno::availability() {
        return Size::NotMeasured(format!("Inno Setup needs 32-bit Wine: {reason}"));
    }
    match inno::Setup::from_dist(version).compile() {
        Ok(setup) => size_of(&setup),
        Err(err) => Size::NotMeasured(format!("the installer did not build: {err:#}")),
    }
}

/// Publishes the platform's binaries into a scratch server directory and sizes the package.
fn package_size(plan: &Plan, platform: &Platform, agent: &Path, updater: &Path) -> Result<Size> {
    let dir = plan.work.join("sizes").join(platform.name);
    std::fs::create_dir_all(&dir)?;
    let version = &plan.bins.current.version;
    fixture::server(plan, &dir).publish(&Release {
        version,
        platform: Some(platform.name),
        agent,
        updater,
    })?;
    let packages = dir.join("packages").join(platform.name).join(version);
    let zip = std::fs::read_dir(&packages)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|e| e == "zip"));
    Ok(zip.map_or_else(
        || Size::NotMeasured(format!("no package in {}", packages.display())),
        |zip| size_of(&zip),
    ))
}

fn size_of(path: &Path) -> Size {
    match std::fs::metadata(path) {
        Ok(meta) => Size::Bytes(meta.len()),
        Err(err) => Size::NotMeasured(format!("{}: {err}", path.display())),
    }
}
