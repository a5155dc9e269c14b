//! The binaries the bench measures, built the way they ship.
//!
//! Full runs measure release builds: the agent and updater are `cargo xtask dist`'s (the
//! shipped files, Windows too when the Windows lane's tools are installed), `cms-server` and
//! `cms-loadgen` come from the same target directory and build version, and the "next" release
//! an update moves to is a second agent/updater build stamped one major version higher
//! (`CMS_BUILD_VERSION`) in its own target directory, so that alternating versions never
//! rebuild each other. Quick runs (smoke tests of the bench itself) use debug builds and the
//! integration tests' versioned build directory, which CI has warm.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::build::{LINUX, Platform, Stamped, StampedBuild, WINDOWS};
use crate::dist_tree;
use crate::util::{self, run_checked};
use crate::version;

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
    pub current: Stamped,
    /// The release an update moves to (`None` when it was not built: see [`NextRelease`]).
    next: Option<Stamped>,
    /// Whether `dist/` holds fresh Windows binaries of `current`.
    pub windows_built: bool,
}

/// Whether a run builds the release an update moves to: the update and delta steps need it,
/// the download push (which serves the current agent's package) does not, and a cold release
/// build of it takes minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextRelease {
    /// Build it.
    Build,
    /// Leave it out.
    Skip,
}

impl Binaries {
    /// The release an update moves to; an error when this run did not build it.
    pub fn next(&self) -> Result<&Stamped> {
        self.next
            .as_ref()
            .context("this step needs the next release, which this run did not build")
    }
}

/// Release builds for a full run; `windows` adds the Windows dist binaries.
pub fn release(windows: bool, next: NextRelease) -> Result<Binaries> {
    let version = version::workspace();
    let platforms: Vec<Platform> = if windows {
        vec![WINDOWS, LINUX]
    } else {
        vec![LINUX]
    };
    dist_tree::build(version, &platforms, None).context("the dist build failed")?;
    let tools = fleet_tools(true)?;
    let next = match next {
        NextRelease::Build => Some(
            StampedBuild::new(&version::next_major(version)?)
                .release()
                .platform(LINUX)
                .target_dir(util::target_dir().join("bench-next"))
                .run()?,
        ),
        NextRelease::Skip => None,
    };
    Ok(Binaries {
        profile: "release",
        server: tools.server,
        loadgen: tools.loadgen,
        current: Stamped::on_host(version, &dist_tree::dir().join(LINUX.name))?,
        next,
        windows_built: windows,
    })
}

/// `cms-server` and `cms-loadgen` alone, for the replica step.
#[derive(Debug, Clone)]
pub struct FleetTools {
    /// Cargo profile (`release` or `dev`).
    pub profile: &'static str,
    /// `cms-server`.
    pub server: PathBuf,
    /// `cms-loadgen`.
    pub loadgen: PathBuf,
}

/// Builds `cms-server` and `cms-loadgen`: release builds for the host triple stamped with the
/// workspace version (as a full run's), or debug builds.
pub fn fleet_tools(release: bool) -> Result<FleetTools> {
    let mut cmd = util::cargo();
    cmd.arg("build");
    let built = if release {
        let host = LINUX.triple;
        cmd.args(["--release", "--target", host])
            .env("CMS_BUILD_VERSION", version::workspace());
        util::target_dir().join(host).join("release")
    } else {
        util::target_dir().join("debug")
    };
    cmd.args(["-p", "cms-server", "-p", "cms-loadgen"]);
    run_checked(&mut cmd)?;
    Ok(FleetTools {
        profile: if release { "release" } else { "dev" },
        server: built.join("cms-server"),
        loadgen: built.join("cms-loadgen"),
    })
}

/// Debug builds for a quick run.
pub fn debug(next: NextRelease) -> Result<Binaries> {
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
    // The integration tests' versioned builds live here (crates/agent/tests/util).
    let next = match next {
        NextRelease::Build => Some(
            StampedBuild::new(&version::next_major(version::workspace())?)
                .target_dir(util::target_dir().join("versioned/build"))
                .run()?,
        ),
        NextRelease::Skip => None,
    };
    let built = util::target_dir().join("debug");
    Ok(Binaries {
        profile: "dev",
        server: built.join("cms-server"),
        loadgen: built.join("cms-loadgen"),
        current: Stamped::on_host(version::workspace(), &built)?,
        next,
        windows_built: false,
    })
}
