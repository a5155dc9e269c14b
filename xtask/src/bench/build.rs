//! The binaries the bench measures, built the way they ship.
//!
//! Full runs measure release builds: the agent and updater are `cargo xtask dist`'s (the
//! shipped files, Windows too when the Windows lane's tools are installed), `cms-server` and
//! `cms-loadgen` come from the same target directory and build version, and the "next" release
//! an update moves to is a second agent/updater build stamped one major version higher
//! (`CMS_BUILD_VERSION`) in its own target directory, so that alternating versions never
//! rebuild each other. Quick runs (smoke tests of the bench itself) use debug builds and the
//! integration tests' versioned build directory, which CI has warm.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::dist::{self, LINUX, Platform, WINDOWS};
use crate::util::{self, run_checked};

/// Where the measured programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Cargo profile they were built with (`release` or `dev`).
    pub profile: &'static str,
    /// `cms-server`.
    pub server: PathBuf,
    /// `cms-loadgen`.
    pub loadgen: PathBuf,
    /// The installed agent and updater.
    pub current: Version,
    /// The release an update moves to.
    pub next: Version,
    /// Whether `dist/` holds fresh Windows binaries of `current`.
    pub windows_built: bool,
}

/// One version's agent and updater.
#[derive(Debug, Clone)]
pub struct Version {
    /// `X.Y.Z`.
    pub version: String,
    /// The agent exe.
    pub agent: PathBuf,
    /// The updater exe.
    pub updater: PathBuf,
}

/// Release builds for a full run; `windows` adds the Windows dist binaries.
pub fn release(windows: bool) -> Result<Binaries> {
    let version = util::workspace_version().to_string();
    let host = LINUX.triple;
    let platforms: Vec<Platform> = if windows {
        vec![WINDOWS, LINUX]
    } else {
        vec![LINUX]
    };
    dist::build(&version, &platforms, None).context("the dist build failed")?;
    let mut tools = util::cargo();
    tools
        .args(["build", "--release", "--target", host])
        .args(["-p", "cms-server", "-p", "cms-loadgen"])
        .env("CMS_BUILD_VERSION", &version);
    run_checked(&mut tools)?;
    let built = util::target_dir().join(host).join("release");
    let next = next_version(&version)?;
    let next_dir = util::target_dir().join("bench-next");
    let mut agent = util::cargo();
    agent
        .args(["build", "--release", "--target", host])
        .args([
            "-p",
            "cms-agent",
            "--bin",
            "cms_agent",
            "-p",
            "cms-updater",
            "--bin",
            "updater",
        ])
        .env("CMS_BUILD_VERSION", &next)
        .env("CARGO_TARGET_DIR", &next_dir);
    run_checked(&mut agent)?;
    Ok(Binaries {
        profile: "release",
        server: built.join("cms-server"),
        loadgen: built.join("cms-loadgen"),
        current: Version {
            agent: dist::dist_binary(&LINUX, "cms_agent"),
            updater: dist::dist_binary(&LINUX, "updater"),
            version,
        },
        next: versioned(next, &next_dir.join(host).join("release")),
        windows_built: windows,
    })
}

/// Debug builds for a quick run.
pub fn debug() -> Result<Binaries> {
    let version = util::workspace_version().to_string();
    let mut cmd = util::cargo();
    cmd.args(["build"]).args([
        "-p",
        "cms-server",
        "-p",
        "cms-loadgen",
        "-p",
        "cms-agent",
        "-p",
        "cms-updater",
    ]);
    run_checked(&mut cmd)?;
    let next = next_version(&version)?;
    // The integration tests' versioned builds live here (crates/agent/tests/util).
    let next_dir = util::target_dir().join("versioned/build");
    let mut agent = util::cargo();
    agent
        .args(["build", "-p", "cms-agent", "-p", "cms-updater"])
        .env("CMS_BUILD_VERSION", &next)
        .env("CARGO_TARGET_DIR", &next_dir);
    run_checked(&mut agent)?;
    let built = util::target_dir().join("debug");
    Ok(Binaries {
        profile: "dev",
        server: built.join("cms-server"),
        loadgen: built.join("cms-loadgen"),
        current: versioned(version, &built),
        next: versioned(next, &next_dir.join("debug")),
        windows_built: false,
    })
}

fn versioned(version: String, dir: &Path) -> Version {
    Version {
        version,
        agent: dir.join("cms_agent"),
        updater: dir.join("updater"),
    }
}

/// One major version above `version` (`0.1.0` -> `1.0.0`): strictly newer, as updates require.
pub fn next_version(version: &str) -> Result<String> {
    let major: u64 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("{version:?} does not start with a major version number"))?;
    Ok(format!("{}.0.0", major + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_version_is_the_next_major() -> Result<()> {
        assert_eq!(next_version("0.1.0")?, "1.0.0");
        assert_eq!(next_version("9.4.2")?, "10.0.0");
        assert!(next_version("x.1.0").is_err());
        Ok(())
    }
}
