//! Helpers shared by the tasks: where the workspace is, running commands loudly, waiting for
//! something to happen, random ids, and the one-line progress reports every task prints.
//!
//! Must never: hide a failed command (every error names the command line), or wait forever.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Runs `cmd` to completion, echoing it first; a non-zero exit is an error naming the command.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

/// The command line of `cmd`, for messages, with the password of any URL in it hidden.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| hide_password(&a.to_string_lossy())));
    parts.join(" ")
}

/// `scheme://user:***@host...` for `scheme://user:password@host...`; anything else unchanged.
fn hide_password(arg: &str) -> String {
    let Some((scheme, rest)) = arg.split_once("://") else {
        return arg.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => arg.to_owned(),
    }
}

/// The cargo target directory: `CARGO_TARGET_DIR` when set (relative paths are taken from the
/// workspace root, as cargo does when run there), otherwise `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => project_root().join(dir),
        _ => project_root().join("target"),
    }
}

/// A `cargo` command (the cargo running xtask, from `$CARGO`) started in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd` like [`run_checked`], but kills it and fails once `timeout` has passed.
pub fn run_checked_timeout(cmd: &mut Command, timeout: Duration) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let status = wait_child(&mut child, &describe(cmd), timeout)?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` with its output captured and returns how it ended, whatever the exit code (the
/// caller judges it); it is killed and an error once `timeout` has passed. Output is collected
/// by reader threads that are given up on shortly after the exit, because a program may leave
/// a child (Wine's `wineserver`) holding the pipes open.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = wait_child(&mut child, &describe(cmd), timeout)?;
    let drained = |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(PIPE_GRACE).unwrap_or_default();
    Ok(Output {
        status,
        stdout: drained(stdout),
        stderr: drained(stderr),
    })
}

/// Waits for `child` (described as `what`) to exit; once `timeout` has passed it is killed and
/// the wait is an error.
pub fn wait_child(child: &mut Child, what: &str, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // Best effort: the error below is what matters.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long output may keep arriving after the program exited.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Reads `pipe` to its end on a thread; the bytes arrive on the returned channel.
fn collect(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the output early; what was read is still worth showing.
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

/// Polls `probe` every 250 ms until it yields a value, failing with `what` once `timeout` has
/// passed. Errors count as "not yet" (a server still starting, a file half written), and the
/// last one is shown if the wait fails.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    wait_for_every(Duration::from_millis(250), what, timeout, probe)
}

/// [`wait_for`], polling every `poll` (the bench times what it waits for).
pub fn wait_for_every<T>(
    poll: Duration,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            let detail = last_error.map(|e| format!(" (last error: {e:#})"));
            bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                detail.unwrap_or_default()
            );
        }
        std::thread::sleep(poll);
    }
}

/// Runs `cmd` and returns its standard output as text; a non-zero exit is an error.
pub fn output_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes `dir` and everything in it; a missing `dir` is fine.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Fails unless `path` is a non-empty file.
pub fn require_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("missing {}", path.display()))?;
    if !meta.is_file() || meta.len() == 0 {
        bail!("{} is not a non-empty file", path.display());
    }
    Ok(())
}

/// `name` with this host's executable suffix (`.exe` on Windows).
pub fn host_exe(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Prints a step of a task: `==> text`.
pub fn step(text: &str) {
    println!("==> {text}");
}

/// Prints a check of a step that passed: `    ok: text`.
pub fn ok(text: &str) {
    println!("    ok: {text}");
}

/// The first `dir/name` on the search path `path` (a `PATH` value) that is a file.
pub fn find_on_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// 128 random bits as hex: one-time tokens, throwaway passwords, report ids.
pub fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden_from_messages() {
        assert_eq!(
            hide_password("postgres://cms:secret@127.0.0.1:5432/db?options=-c%20x"),
            "postgres://cms:***@127.0.0.1:5432/db?options=-c%20x"
        );
        assert_eq!(
            hide_password("postgres://cms@host/db"),
            "postgres://cms@host/db"
        );
        assert_eq!(hide_password("--data-dir"), "--data-dir");
        let mut cmd = Command::new("cms-server");
        cmd.args(["serve", "--database-url", "postgres://a:b@h/d"]);
        assert_eq!(
            describe(&cmd),
            "cms-server serve --database-url postgres://a:***@h/d"
        );
    }
}
