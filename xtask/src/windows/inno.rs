//! The Windows installer compiled with Inno Setup's `ISCC.exe` from
//! `build_scripts/installer.iss` into `dist/cms_agent_setup-X.Y.Z.exe`, from the binaries in
//! `dist/windows-x86_64/`.
//!
//! Where ISCC runs: on a Windows host natively (`$CMS_ISCC`, else `ISCC.exe` on `PATH`, else
//! Inno Setup 6's default install folder); on Linux under Wine in a throwaway prefix
//! (`$CMS_ISCC`, else the npm package `innosetup` that `.ci/windows-deps.sh` unpacks into the
//! CI cache). ISCC.exe is a 32-bit program: under Wine it needs 32-bit Wine, which
//! [`availability`] reports, for the caller to skip.
//!
//! With a TUF root ([`Setup::trusted_root`], or `dist/windows-x86_64/root.json` when `cargo
//! xtask dist --trusted-root` put one there), ISCC gets `/DTrustedRoot=<file>`: the script
//! installs it as `{app}\root.json` per machine and pins it at `--enable-autostart`.
//!
//! Signing goes through Inno Setup's Sign Tool hook ([`crate::signing::hook`]): ISCC signs the
//! uninstaller it embeds, any program it packs that is not signed yet (in place, in `dist/`),
//! and the setup exe; then all three must carry a signature.
//!
//! Must never: put anything but the `dist/` binaries and a checked TUF root into the installer
//! (the `.iss` decides; no config.json, never the Wine test shim), or let the signing secrets
//! into ISCC's environment.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::build::{SHIPPED, WINDOWS};
use crate::dist_tree;
use crate::signing::hook::SignHook;
use crate::signing::signer::{self, Signer};
use crate::trusted_root::TrustedRoot;
use crate::util::{self, run_checked_timeout};
use crate::windows::wine::{self, WinePrefix};

/// The Inno Setup script, relative to the workspace root.
const ISS: &str = "build_scripts/installer.iss";

/// Time limit for one ISCC run.
const ISCC_TIMEOUT: Duration = Duration::from_secs(600);

/// Where Inno Setup 6 installs itself by default, under `%ProgramFiles(x86)%`.
const DEFAULT_INSTALL: &str = r"Inno Setup 6\ISCC.exe";

/// Whether ISCC can run on this machine: `Err` says why not (no 32-bit Wine), for a skip.
pub fn availability() -> std::result::Result<(), String> {
    match WINDOWS.is_host {
        true => Ok(()),
        false => wine::wine32_status(),
    }
}

/// One setup exe to compile from the binaries in `dist/`.
#[derive(Debug)]
pub struct Setup<'a> {
    version: &'a str,
    signer: Option<Signer>,
    trusted_root: Option<PathBuf>,
    out_dir: PathBuf,
}

impl<'a> Setup<'a> {
    /// The installer of `dist/` for `version`: into `dist/`, embedding `dist/`'s TUF root
    /// (`windows-x86_64/root.json`) when there is one.
    pub fn from_dist(version: &'a str) -> Self {
        let root = dist_tree::trusted_root(&WINDOWS);
        Setup {
            version,
            signer: None,
            trusted_root: root.is_file().then_some(root),
            out_dir: dist_tree::dir(),
        }
    }

    /// Signed with `signer` (into `dist/` only: the Sign Tool signs nothing outside it).
    pub fn signed(mut self, signer: Option<Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// Embedding `root` (a TUF root file) instead of `dist/`'s.
    pub fn trusted_root(mut self, root: &Path) -> Self {
        self.trusted_root = Some(root.to_path_buf());
        self
    }

    /// Into `dir` instead of `dist/`.
    pub fn out_dir(mut self, dir: &Path) -> Self {
        self.out_dir = dir.to_path_buf();
        self
    }

    /// Runs ISCC; returns the path of the setup exe.
    pub fn compile(mut self) -> Result<PathBuf> {
        let root = self
            .trusted_root
            .as_deref()
            .map(TrustedRoot::read)
            .transpose()?;
        let iscc = Iscc::find()?;
        let mut cmd = iscc.command();
        signer::without_secrets(&mut cmd);
        let hook = match self.signer.take() {
            Some(signer) => Some(sign_hook(&iscc, signer, &self.out_dir, &mut cmd)?),
            None => None,
        };
        self.script_args(&iscc, root.as_ref(), &mut cmd);
        let signing = hook.is_some();
        let started = Instant::now();
        let compiled = run_checked_timeout(&mut cmd, ISCC_TIMEOUT).context("ISCC failed");
        let signed = hook.map(SignHook::stop).transpose();
        compiled.and(signed)?;
        let setup = self
            .out_dir
            .join(format!("{}.exe", dist_tree::setup_name(self.version)));
        util::require_file(&setup)?;
        if signing {
            require_signed(&setup)?;
        }
        eprintln!(
            "installer: {} in {:.0?}",
            setup.display(),
            started.elapsed()
        );
        Ok(setup)
    }

    /// The defines, output and script ISCC is given (`/DTrustedRoot` with a `root`).
    fn script_args(&self, iscc: &Iscc, root: Option<&TrustedRoot>, cmd: &mut Command) {
        if let Some(root) = root {
            eprintln!(
                "installer: embedding the TUF root {} (version {})",
                root.source().display(),
                root.version()
            );
            cmd.arg(format!(
                "/DTrustedRoot={}",
                iscc.windows_path(root.source())
            ));
        }
        cmd.arg("/Q")
            .arg(format!("/DAppVersion={}", self.version))
            .arg(format!(
                "/DDistDir={}",
                iscc.windows_path(&dist_tree::dir())
            ))
            .arg(format!("/O{}", iscc.windows_path(&self.out_dir)))
            .arg(format!("/F{}", dist_tree::setup_name(self.version)))
            .arg(iscc.windows_path(&util::project_root().join(ISS)));
    }
}

/// Starts the Sign Tool hook for `signer` and tells ISCC (`cmd`) about it; the setup must go
/// to `dist/`, where the hook signs.
fn sign_hook(iscc: &Iscc, signer: Signer, out_dir: &Path, cmd: &mut Command) -> Result<SignHook> {
    let dist = dist_tree::dir();
    ensure!(
        out_dir == dist,
        "a signed installer goes to {}, not {}",
        dist.display(),
        out_dir.display()
    );
    eprintln!("installer: signing: {}", signer.summary());
    let hook = SignHook::start(signer, &dist, iscc.host_path())?;
    cmd.arg("/DSign")
        .arg(format!(
            "/S{}={} $f",
            SignHook::TOOL_NAME,
            iscc.sign_tool()?
        ))
        .envs(hook.env());
    Ok(hook)
}

/// Fails unless the setup exe and the programs it packs carry a signature.
fn require_signed(setup: &Path) -> Result<()> {
    let programs = SHIPPED
        .iter()
        .map(|(_, name)| dist_tree::binary(&WINDOWS, name));
    std::iter::once(setup.to_path_buf())
        .chain(programs)
        .try_for_each(|path| signer::require_signature(&path))
}

/// ISCC.exe, and how it is run here.
#[derive(Debug)]
enum Iscc {
    /// On a Windows host.
    Native(PathBuf),
    /// Under Wine, in its own prefix.
    Wine { exe: PathBuf, prefix: WinePrefix },
}

impl Iscc {
    fn find() -> Result<Self> {
        if WINDOWS.is_host {
            return Ok(Iscc::Native(native_iscc()?));
        }
        Ok(Iscc::Wine {
            exe: cached_iscc()?,
            prefix: wine::prepare_prefix("iscc")?,
        })
    }

    fn command(&self) -> Command {
        match self {
            Iscc::Native(exe) => Command::new(exe),
            Iscc::Wine { exe, prefix } => prefix.command(exe),
        }
    }

    /// How ISCC (a Windows program) names the file `path` of this machine.
    fn windows_path(&self, path: &Path) -> String {
        match self {
            // Absolute, with `\` throughout (`build_scripts/installer.iss` joined to the root).
            Iscc::Native(_) => std::path::absolute(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
            Iscc::Wine { .. } => wine::windows_path(path),
        }
    }

    /// The inverse of [`Iscc::windows_path`], for the paths the Sign Tool is given.
    fn host_path(&self) -> fn(&str) -> Result<PathBuf> {
        match self {
            Iscc::Native(_) => |path| Ok(PathBuf::from(path)),
            Iscc::Wine { .. } => wine::unix_path,
        }
    }

    /// The Sign Tool's program, quoted the Inno Setup way (`$q`): a Windows program ISCC can
    /// wait for. Natively that is this xtask (`sign-tool`); under Wine, where ISCC cannot wait
    /// for a Linux program, `signhook.exe` built with mingw.
    fn sign_tool(&self) -> Result<String> {
        Ok(match self {
            Iscc::Native(_) => {
                let xtask = std::env::current_exe().context("cannot find the running xtask")?;
                format!("$q{}$q sign-tool", xtask.display())
            }
            Iscc::Wine { .. } => {
                let helper = wine::build_windows_program(
                    "signhook/signhook.exe",
                    &["-O2", "-s", "-municode"],
                    &["signhook.c"],
                    &["-lws2_32"],
                )
                .context("cannot build signhook.exe (ISCC's Sign Tool under Wine)")?;
                format!("$q{}$q", wine::windows_path(&helper))
            }
        })
    }
}

/// ISCC.exe on a Windows host: `$CMS_ISCC`, `PATH`, or Inno Setup 6's default install folder.
fn native_iscc() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CMS_ISCC") {
        return Ok(PathBuf::from(path));
    }
    let program_files = std::env::var_os("ProgramFiles(x86)")
        .map_or_else(|| PathBuf::from(r"C:\Program Files (x86)"), PathBuf::from);
    util::find_on_path(&std::env::var_os("PATH").unwrap_or_default(), "ISCC.exe")
        .or_else(|| Some(program_files.join(DEFAULT_INSTALL)).filter(|p| p.is_file()))
        .with_context(|| {
            format!(
                "no ISCC.exe on PATH or in {}: install Inno Setup 6 or set CMS_ISCC",
                program_files.join(DEFAULT_INSTALL).display()
            )
        })
}

/// ISCC.exe for Wine: `$CMS_ISCC`, else the newest `innosetup-*` in the CI cache.
fn cached_iscc() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CMS_ISCC") {
        return Ok(PathBuf::from(path));
    }
    let cache = wine::ci_cache_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(&cache)
        .with_context(|| {
            format!(
                "no CI cache at {} (run .ci/windows-deps.sh)",
                cache.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("innosetup-"))
        })
        .map(|p| p.join("package/bin/ISCC.exe"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no innosetup-*/package/bin/ISCC.exe in {} (run .ci/windows-deps.sh)",
            cache.display()
        )
    })
}
