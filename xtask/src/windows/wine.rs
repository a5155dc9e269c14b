//! Wine for the Windows lane: throwaway Wine prefixes, the virtual display setup.exe needs,
//! Windows helper programs built with mingw, and the mapping between Unix and Windows paths.
//!
//! Prefixes: a template is made once with `wineboot --init` and `winecfg -v win10` (Wine 8
//! says Windows 7 by default) and kept in `$CMS_CI_CACHE/wine-template` when the CI cache dir
//! exists (`.ci/windows-deps.sh` makes it; default `/var/cache/cms-agent-ci`), else in
//! `<target>/wine/template`; it is remade when the Wine version or the presence of 32-bit Wine
//! changes (a prefix made without wine32 cannot run 32-bit programs). Each [`prepare_prefix`]
//! clones it to `<target>/wine/prefixes/<name>` (Windows binaries hard-linked: 40 MB instead
//! of 1.2 GB, in about a second) and installs the TEST-ONLY
//! `bcryptprimitives.dll` shim (built from `xtask/wine/bcryptprimitives.c`), without which no
//! Rust exe loads under Wine 8.
//!
//! Wine runs on Linux only: the tasks that need it call [`require_wine_host`] first.
//!
//! Must never: put the shim anywhere but a Wine prefix (never `dist/`, never the installer), or
//! touch the user's own `~/.wine`.

use crate::build::LINUX;
use crate::host;
use crate::util::{self, describe, output_timeout, run_checked, run_checked_timeout};
use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The C compiler that builds the shim (from Debian's `gcc-mingw-w64-x86-64`).
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// Name of the file in a template that says which Wine made it.
const STAMP_FILE: &str = ".cms-template-stamp";

/// Changes whenever [`ensure_template`] makes templates differently, so old ones are remade.
const TEMPLATE_FORMAT: &str = "template=2 (win10)";

/// How long `wineboot --init` and `wineserver -w` may take before we give up.
const WINEBOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Time limit for one short-lived Windows program (`--status`, `reg`, `cmd`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails unless this machine can run Windows programs under Wine (Linux): `what` needs it.
pub fn require_wine_host(what: &str) -> Result<()> {
    if !LINUX.is_host {
        bail!(
            "{what} runs the Windows programs under Wine, in throwaway prefixes: it needs Linux \
             with Wine (bash .ci/windows-deps.sh), not this machine"
        );
    }
    Ok(())
}

/// The Windows form of an absolute Unix path, through Wine's `Z:` drive.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// The Unix path of a path on Wine's `Z:` drive (the inverse of [`windows_path`]).
pub fn unix_path(windows: &str) -> Result<PathBuf> {
    let rest = windows
        .strip_prefix("Z:")
        .or_else(|| windows.strip_prefix("z:"))
        .with_context(|| format!("{windows} is not on Wine's Z: drive"))?;
    Ok(PathBuf::from(rest.replace('\\', "/")))
}

/// A Wine prefix of our own (never `~/.wine`) with the test shim installed.
#[derive(Debug)]
pub struct WinePrefix {
    dir: PathBuf,
}

impl WinePrefix {
    /// The prefix directory (`WINEPREFIX`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Unix path of `C:\`.
    pub fn drive_c(&self) -> PathBuf {
        self.dir.join("drive_c")
    }

    /// `wine <exe>` in this prefix, with Wine's debug output off.
    pub fn command(&self, exe: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(wine_program());
        cmd.arg(exe);
        self.apply_env(&mut cmd);
        cmd
    }

    /// Sets `WINEPREFIX` and `WINEDEBUG=-all` on any command (cargo, xvfb-run, wineserver).
    pub fn apply_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("WINEPREFIX", &self.dir).env("WINEDEBUG", "-all")
    }

    /// Waits until every Wine process of this prefix has ended (`wineserver -w`).
    pub fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let mut cmd = Command::new(wineserver_program());
        self.apply_env(&mut cmd).arg("-w");
        run_checked_timeout(&mut cmd, timeout)
    }

    /// Kills every Wine process of this prefix (`wineserver -k`).
    pub fn kill_all(&self) -> Result<()> {
        kill_prefix(&self.dir)
    }

    /// Starts this prefix's wineserver for good (`wineserver -p`): otherwise it ends a few
    /// seconds after the last ordinary Wine program, and takes Wine's `services.exe` and every
    /// service with it. [`WinePrefix::kill_all`] ends it like a power cut; the next Wine
    /// program starts `services.exe` again, which starts the automatic services (a boot).
    pub fn persist(&self) -> Result<()> {
        let mut cmd = Command::new(wineserver_program());
        self.apply_env(&mut cmd).arg("-p");
        run_checked_timeout(&mut cmd, WINEBOOT_TIMEOUT)
    }
}

/// `wineserver -k` for the prefix `dir` (a non-zero exit only means none was running).
fn kill_prefix(dir: &Path) -> Result<()> {
    let mut cmd = Command::new(wineserver_program());
    cmd.env("WINEPREFIX", dir)
        .env("WINEDEBUG", "-all")
        .arg("-k");
    cmd.status()
        .with_context(|| format!("cannot start {}", describe(&cmd)))?;
    Ok(())
}

impl Drop for WinePrefix {
    fn drop(&mut self) {
        // Best effort: a throwaway prefix must not leave Windows programs running behind it.
        let _ = self.kill_all();
    }
}

/// Runs a short-lived Windows program (at most [`COMMAND_TIMEOUT`]); a non-zero exit is an
/// error carrying its output.
pub fn run_windows(cmd: &mut Command) -> Result<Output> {
    let out = output_timeout(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A fresh throwaway prefix `<target>/wine/prefixes/<name>` (anything there before is removed):
/// a copy of the template with the `bcryptprimitives.dll` test shim in `system32`.
pub fn prepare_prefix(name: &str) -> Result<WinePrefix> {
    let template = ensure_template()?;
    let shim = build_shim()?;
    let dir = util::target_dir().join("wine/prefixes").join(name);
    if dir.exists() {
        // A run that died may have left programs running in it.
        kill_prefix(&dir)?;
        util::remove_dir_if_exists(&dir)?;
    }
    fs::create_dir_all(dir.parent().unwrap_or(&dir))
        .with_context(|| format!("cannot create the parent of {}", dir.display()))?;
    clone_tree(&template, &dir, false)
        .with_context(|| format!("cannot copy {} to {}", template.display(), dir.display()))?;
    let installed = dir.join("drive_c/windows/system32/bcryptprimitives.dll");
    // Never write through a hard link into the template: replace, do not overwrite.
    if installed.exists() {
        fs::remove_file(&installed)
            .with_context(|| format!("cannot remove {}", installed.display()))?;
    }
    fs::copy(&shim, &installed)
        .with_context(|| format!("cannot install the shim as {}", installed.display()))?;
    Ok(WinePrefix { dir })
}

/// Copies the prefix tree `src` to `dest` (which must not exist). Symlinks are copied as links
/// (never followed: `dosdevices/z:` points at `/`); Windows binaries under `drive_c/windows`
/// are hard-linked when `share` allows (Wine never rewrites them, and a prefix is 1.2 GB of
/// them); everything else, the registry included, is copied.
fn clone_tree(src: &Path, dest: &Path, share: bool) -> Result<()> {
    fs::create_dir(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for entry in fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))? {
        let entry = entry?;
        let (from, to) = (entry.path(), dest.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            host::copy_symlink(&from, &to)?;
        } else if kind.is_dir() {
            let share = share || from.ends_with("drive_c/windows");
            clone_tree(&from, &to, share)?;
        } else if !(share && is_windows_binary(&from) && fs::hard_link(&from, &to).is_ok()) {
            fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    Ok(())
}

/// Whether `path` is a Windows binary (by extension) that programs load but do not write.
fn is_windows_binary(path: &Path) -> bool {
    const EXTENSIONS: [&str; 9] = ["dll", "exe", "drv", "sys", "ocx", "cpl", "acm", "ax", "tlb"];
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The `wine` launcher (`$CMS_WINE` overrides it).
pub fn wine_program() -> String {
    std::env::var("CMS_WINE").unwrap_or_else(|_| "wine".to_string())
}

/// The `wineserver` matching [`wine_program`] (`$CMS_WINESERVER` overrides it).
fn wineserver_program() -> String {
    std::env::var("CMS_WINESERVER").unwrap_or_else(|_| "wineserver".to_string())
}

/// Whether 32-bit Wine (Debian's `wine32:i386`) is installed; `Err` carries why not.
pub fn wine32_status() -> std::result::Result<(), String> {
    let loader = Path::new("/usr/lib/wine/wine");
    if loader.exists() {
        return Ok(());
    }
    let reason = deps_summary_value("WINE32_REASON").filter(|r| !r.is_empty());
    Err(format!(
        "32-bit Wine (wine32:i386) is not installed ({} missing){}",
        loader.display(),
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    ))
}

/// The CI cache directory shared by `.ci/windows-deps.sh` and xtask.
pub fn ci_cache_dir() -> PathBuf {
    std::env::var_os("CMS_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cms-agent-ci"))
}

/// A value from the summary `.ci/windows-deps.sh` writes (`KEY=value`, shell-quoted).
fn deps_summary_value(key: &str) -> Option<String> {
    let text = fs::read_to_string(ci_cache_dir().join("windows-deps.env")).ok()?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))?;
    Some(line.replace('\\', "").trim_matches('\'').to_string())
}

/// The template prefix, made (again) when missing or made by another Wine.
fn ensure_template() -> Result<PathBuf> {
    // Tests in one process may prepare prefixes in parallel: one makes the template.
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING
        .lock()
        .map_err(|_| anyhow::anyhow!("template lock poisoned"))?;
    let dir = template_dir();
    let stamp = template_stamp()?;
    if fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp) {
        return Ok(dir);
    }
    eprintln!(
        "wine: making the template prefix {} ({stamp})",
        dir.display()
    );
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    util::remove_dir_if_exists(&tmp)?;
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let prefix = WinePrefix { dir: tmp.clone() };
    let mut boot = prefix.command("wineboot");
    // No Mono/Gecko download prompts: they need a display and the network.
    boot.arg("--init")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
    run_checked_timeout(&mut boot, WINEBOOT_TIMEOUT)?;
    // Wine 8 says Windows 7 by default; the agent (and its installer) need Windows 10.
    let mut winver = prefix.command("winecfg");
    winver.args(["-v", "win10"]);
    run_checked_timeout(&mut winver, WINEBOOT_TIMEOUT)?;
    prefix.wait_idle(WINEBOOT_TIMEOUT)?;
    fs::write(tmp.join(STAMP_FILE), &stamp).context("cannot write the template stamp")?;
    util::remove_dir_if_exists(&dir)?;
    fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    Ok(dir)
}

/// Where the template lives: the CI cache when it exists (kept between CI runs), else target/.
fn template_dir() -> PathBuf {
    let cache = ci_cache_dir();
    if cache.is_dir() {
        cache.join("wine-template")
    } else {
        util::target_dir().join("wine/template")
    }
}

/// What a template must have been made by: the Wine version and whether wine32 was there.
fn template_stamp() -> Result<String> {
    let version = util::output_checked(Command::new(wine_program()).arg("--version"))
        .context("Wine is not usable (run .ci/windows-deps.sh)")?;
    let wine32 = if wine32_status().is_ok() { "yes" } else { "no" };
    Ok(format!(
        "{} wine32={wine32} {TEMPLATE_FORMAT}\n",
        version.trim()
    ))
}

/// Builds the TEST-ONLY shim into `<target>/wine/shim/` and returns its path (once a process).
fn build_shim() -> Result<PathBuf> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .map_err(|_| anyhow::anyhow!("shim lock poisoned"))?;
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let out = build_windows_program(
        "shim/bcryptprimitives.dll",
        &["-shared", "-O2", "-s", "-static-libgcc"],
        &["bcryptprimitives.c", "bcryptprimitives.def"],
        &["-ladvapi32"],
    )
    .context("cannot build the bcryptprimitives.dll test shim")?;
    *built = Some(out.clone());
    Ok(out)
}

/// Builds a Windows binary with mingw from `sources` in `xtask/wine/` into
/// `<target>/wine/<out>` and returns its path. Built under a unique name, then renamed: other
/// processes may be using the old one.
pub fn build_windows_program(
    out: &str,
    flags: &[&str],
    sources: &[&str],
    libs: &[&str],
) -> Result<PathBuf> {
    let src = util::project_root().join("xtask/wine");
    let out = util::target_dir().join("wine").join(out);
    let out_dir = out.parent().unwrap_or(&out);
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut tmp = out.clone().into_os_string();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut gcc = Command::new(MINGW_GCC);
    gcc.args(flags).arg("-o").arg(&tmp);
    gcc.args(sources.iter().map(|s| src.join(s))).args(libs);
    run_checked(&mut gcc)?;
    fs::rename(&tmp, &out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))?;
    Ok(out)
}

/// A private Xvfb display (setup.exe needs one even with `/VERYSILENT`), stopped on drop.
#[derive(Debug)]
pub struct VirtualDisplay {
    server: Child,
    name: String,
}

impl VirtualDisplay {
    /// Starts `Xvfb` on a free display number (it picks one and reports it on `-displayfd`).
    pub fn start() -> Result<Self> {
        let mut cmd = Command::new("Xvfb");
        cmd.args([
            "-displayfd",
            "1",
            "-nolisten",
            "tcp",
            "-screen",
            "0",
            "1024x768x24",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut server = cmd
            .spawn()
            .with_context(|| format!("cannot start {} (apt-get install xvfb)", describe(&cmd)))?;
        let mut line = String::new();
        if let Some(out) = server.stdout.take() {
            BufReader::new(out)
                .read_line(&mut line)
                .context("reading Xvfb's display number")?;
        }
        let number = line.trim().to_string();
        let display = Self {
            server,
            name: format!(":{number}"),
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            bail!("Xvfb did not report a display number (got {line:?})");
        }
        Ok(display)
    }

    /// The `DISPLAY` value, e.g. `:1`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for VirtualDisplay {
    fn drop(&mut self) {
        // Best effort: the display was ours alone.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_paths_map_to_wines_z_drive_and_back() {
        let path = Path::new("/work/main/dist/uninst.e32.tmp");
        assert_eq!(windows_path(path), r"Z:\work\main\dist\uninst.e32.tmp");
        assert_eq!(unix_path(&windows_path(path)).ok().as_deref(), Some(path));
        assert!(unix_path(r"C:\users\x\Temp\a.exe").is_err());
    }
}
