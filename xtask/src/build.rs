//! Cargo builds of the workspace's programs for the tasks: the platforms we ship for, the agent
//! and the updater stamped with a release version (`CMS_BUILD_VERSION=X.Y.Z`), and the debug
//! `cms-server` the tasks run.
//!
//! A stamped build names its own target directory whenever it stamps a version other than the
//! one its directory is built with elsewhere, so that alternating versions never rebuild each
//! other and a build stamped 2.0.0 never replaces the binaries other tests run.
//!
//! Must never: report a build as done whose programs are not there.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::util::{self, run_checked};

/// A platform the programs are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// Folder name under `dist/`, also the release platform name (`release publish --platform`).
    pub name: &'static str,
    /// Rust target triple.
    pub triple: &'static str,
    /// Executable suffix (`.exe` on Windows).
    pub exe_suffix: &'static str,
    /// Whether programs built for it run on the machine xtask runs on.
    pub is_host: bool,
}

impl Platform {
    /// The file name of the program `name` on this platform.
    pub fn exe(&self, name: &str) -> String {
        format!("{name}{}", self.exe_suffix)
    }
}

/// 64-bit Windows (mingw: cross-compiled on Linux, or built with the `x86_64-pc-windows-gnu`
/// target on Windows).
pub const WINDOWS: Platform = Platform {
    name: "windows-x86_64",
    triple: "x86_64-pc-windows-gnu",
    exe_suffix: ".exe",
    is_host: cfg!(all(windows, target_arch = "x86_64")),
};

/// 64-bit Linux (glibc).
pub const LINUX: Platform = Platform {
    name: "linux-x86_64",
    triple: "x86_64-unknown-linux-gnu",
    exe_suffix: "",
    is_host: cfg!(all(target_os = "linux", target_arch = "x86_64")),
};

/// The programs we ship, as (cargo package, binary name).
pub const SHIPPED: [(&str, &str); 2] = [("cms-agent", "cms_agent"), ("cms-updater", "updater")];

/// A cargo profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`, in `debug/`.
    Dev,
    /// The workspace's `release` profile (size-optimised, LTO, stripped).
    Release,
}

impl Profile {
    /// The folder cargo puts its output in.
    fn dir(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}

/// How to build the agent and the updater stamped with one version; [`StampedBuild::run`]
/// builds them.
#[derive(Debug, Clone)]
pub struct StampedBuild {
    version: String,
    profile: Profile,
    platform: Option<Platform>,
    target_dir: PathBuf,
    examples: Vec<&'static str>,
    lean: bool,
}

/// The programs of a finished [`StampedBuild`].
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The version they carry.
    pub version: String,
    /// `cms_agent`.
    pub agent: PathBuf,
    /// `updater`.
    pub updater: PathBuf,
    /// Where cargo put them.
    pub dir: PathBuf,
    /// Their executable suffix.
    exe_suffix: &'static str,
}

impl StampedBuild {
    /// A dev build for this host, in the shared target directory.
    pub fn new(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            profile: Profile::Dev,
            platform: None,
            target_dir: util::target_dir(),
            examples: Vec::new(),
            lean: false,
        }
    }

    /// With the workspace's release profile.
    pub fn release(mut self) -> Self {
        self.profile = Profile::Release;
        self
    }

    /// For `platform` (`--target`), output in `<target dir>/<triple>/`.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// In a target directory of its own.
    pub fn target_dir(mut self, dir: PathBuf) -> Self {
        self.target_dir = dir;
        self
    }

    /// Also the example `name` of cms-agent.
    pub fn example(mut self, name: &'static str) -> Self {
        self.examples.push(name);
        self
    }

    /// Without debug info and stripped (a dev build a quarter of the size, for a package that is
    /// downloaded).
    pub fn lean(mut self) -> Self {
        self.lean = true;
        self
    }

    /// Runs the build and checks that its programs are there.
    pub fn run(&self) -> Result<Stamped> {
        let mut cmd = util::cargo();
        cmd.arg("build");
        if self.profile == Profile::Release {
            cmd.arg("--release");
        }
        if let Some(platform) = self.platform {
            cmd.args(["--target", platform.triple]);
        }
        for (package, binary) in SHIPPED {
            cmd.args(["-p", package, "--bin", binary]);
        }
        for example in &self.examples {
            cmd.args(["--example", example]);
        }
        if self.lean {
            cmd.env("CARGO_PROFILE_DEV_DEBUG", "false")
                .env("CARGO_PROFILE_DEV_STRIP", "true");
        }
        cmd.env("CMS_BUILD_VERSION", &self.version)
            .env("CARGO_TARGET_DIR", &self.target_dir);
        run_checked(&mut cmd).with_context(|| format!("the {} build failed", self.version))?;
        let built = self.output()?;
        for example in &self.examples {
            util::require_file(&built.example(example))?;
        }
        Ok(built)
    }

    /// The programs where cargo put them, checked.
    fn output(&self) -> Result<Stamped> {
        let mut dir = self.target_dir.clone();
        if let Some(platform) = self.platform {
            dir.push(platform.triple);
        }
        dir.push(self.profile.dir());
        let exe_suffix = self
            .platform
            .map_or(std::env::consts::EXE_SUFFIX, |p| p.exe_suffix);
        Stamped::checked(&self.version, &dir, exe_suffix)
    }
}

impl Stamped {
    /// The agent and the updater of `version` for this host, already in `dir`.
    #[cfg_attr(
        not(target_os = "linux"),
        expect(dead_code, reason = "the bench's (Linux only)")
    )]
    pub fn on_host(version: &str, dir: &Path) -> Result<Stamped> {
        Self::checked(version, dir, std::env::consts::EXE_SUFFIX)
    }

    /// `cms_agent` and `updater` in `dir`, which must be there.
    fn checked(version: &str, dir: &Path, exe_suffix: &'static str) -> Result<Stamped> {
        let built = Stamped {
            version: version.to_owned(),
            agent: dir.join(format!("cms_agent{exe_suffix}")),
            updater: dir.join(format!("updater{exe_suffix}")),
            dir: dir.to_path_buf(),
            exe_suffix,
        };
        util::require_file(&built.agent)?;
        util::require_file(&built.updater)?;
        Ok(built)
    }

    /// The example `name` of cms-agent in this build.
    pub fn example(&self, name: &str) -> PathBuf {
        self.dir
            .join("examples")
            .join(format!("{name}{}", self.exe_suffix))
    }

    /// Copies the agent and the updater into `dir` (made if missing), keeping their names.
    pub fn copy_to(&self, dir: &Path) -> Result<Stamped> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for from in [&self.agent, &self.updater] {
            let name = from.file_name().context("a program has no file name")?;
            std::fs::copy(from, dir.join(name))
                .with_context(|| format!("cannot copy {} to {}", from.display(), dir.display()))?;
        }
        Self::checked(&self.version, dir, self.exe_suffix)
    }
}

/// `cargo build -p cms-server` (debug, the shared target directory); returns the server's path.
pub fn server() -> Result<PathBuf> {
    run_checked(util::cargo().args(["build", "-p", "cms-server"]))?;
    let exe = util::target_dir()
        .join("debug")
        .join(util::host_exe("cms-server"));
    util::require_file(&exe)?;
    Ok(exe)
}
