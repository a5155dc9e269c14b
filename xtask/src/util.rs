//! Helpers shared by the tasks: where the workspace is, and running commands loudly.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
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

/// The workspace version (`[workspace.package] version`, which xtask inherits).
pub fn workspace_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Runs `cmd` like [`run_checked`], but kills it and fails once `timeout` has passed.
pub fn run_checked_timeout(cmd: &mut Command, timeout: Duration) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            if !status.success() {
                bail!("{} failed with {status}", describe(cmd));
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            // Best effort: the error below is what matters.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within {timeout:?}", describe(cmd));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the error below is what matters.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within {timeout:?}", describe(cmd));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let drained = |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(PIPE_GRACE).unwrap_or_default();
    Ok(Output {
        status,
        stdout: drained(stdout),
        stderr: drained(stderr),
    })
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

/// `cargo build -p cms-server` (debug, the shared target dir); returns the server's path.
pub fn build_server() -> Result<PathBuf> {
    run_checked(cargo().args(["build", "-p", "cms-server"]))?;
    let exe = target_dir()
        .join("debug")
        .join(format!("cms-server{}", std::env::consts::EXE_SUFFIX));
    crate::dist::require_file(&exe)?;
    Ok(exe)
}

/// `server_exe release publish` of `agent` + `updater` as `version` into `data_dir`, for
/// `platform` (the server's own platform when `None`); the caller runs it.
pub fn publish_command(
    server_exe: &Path,
    data_dir: &Path,
    version: &str,
    platform: Option<&str>,
    (agent, updater): (&Path, &Path),
) -> Command {
    let mut cmd = Command::new(server_exe);
    cmd.args(["release", "publish", "--data-dir"])
        .arg(data_dir)
        .args(["--version", version]);
    if let Some(platform) = platform {
        cmd.args(["--platform", platform]);
    }
    cmd.arg("--agent").arg(agent).arg("--updater").arg(updater);
    cmd
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

/// Removes every `FLAG VALUE` pair whose flag is one of `flags` from `args` (before any `--`)
/// and returns the values in order; a flag without a value is an error.
pub fn take_values(args: &mut Vec<String>, flags: &[&str]) -> Result<Vec<String>> {
    let mut values = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--" {
            break;
        }
        if flags.contains(&args[i].as_str()) {
            let flag = args.remove(i);
            if i >= args.len() || args[i] == "--" {
                bail!("{flag} needs a value");
            }
            values.push(args.remove(i));
        } else {
            i += 1;
        }
    }
    Ok(values)
}

/// Like [`take_values`] for an option that may be given at most once.
pub fn take_value(args: &mut Vec<String>, flags: &[&str]) -> Result<Option<String>> {
    let mut values = take_values(args, flags)?;
    if values.len() > 1 {
        bail!("{} given more than once", flags.join("/"));
    }
    Ok(values.pop())
}

/// Removes the switch `flag` from `args` (before any `--`) and says whether it was there.
pub fn take_switch(args: &mut Vec<String>, flag: &str) -> bool {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    match args[..end].iter().position(|a| a == flag) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

/// Fails when `args` still holds anything: the task did not understand it.
pub fn reject_rest(task: &str, args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("{task}: unexpected arguments {args:?}");
    }
    Ok(())
}

/// Removes `dir` and everything in it; a missing `dir` is fine.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_taken_before_the_double_dash_only() -> Result<()> {
        let mut a = args(&["-p", "a", "--package", "b", "--", "-p", "c"]);
        assert_eq!(take_values(&mut a, &["-p", "--package"])?, ["a", "b"]);
        assert_eq!(a, ["--", "-p", "c"]);
        let mut a = args(&["--smoke-test", "--", "--smoke-test"]);
        assert!(take_switch(&mut a, "--smoke-test"));
        assert!(!take_switch(&mut a, "--smoke-test"));
        Ok(())
    }

    #[test]
    fn a_missing_or_repeated_value_is_an_error() {
        assert!(take_values(&mut args(&["-p"]), &["-p"]).is_err());
        assert!(take_values(&mut args(&["-p", "--"]), &["-p"]).is_err());
        assert!(
            take_value(
                &mut args(&["--version", "1", "--version", "2"]),
                &["--version"]
            )
            .is_err()
        );
        assert!(reject_rest("t", &args(&["--bogus"])).is_err());
    }
}
