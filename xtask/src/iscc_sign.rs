//! Inno Setup's Sign Tool hook under Wine, for `cargo xtask installer --sign`: ISCC signs the
//! uninstaller it embeds (which is also Setup's temporary self-copy), the programs it packs
//! when they are not signed yet (`signonce`), and the finished setup exe, all with the same
//! [`Signer`] as `dist --sign`.
//!
//! ISCC runs its Sign Tool for each file and waits for it. Under Wine it cannot wait for a
//! Linux program (no process handle), so the Sign Tool is `signhook.exe`
//! (`xtask/wine/signhook.c`, built with mingw): it sends a one-time token and the file's path
//! to a listener on 127.0.0.1 in this process, which signs the file and answers `ok` or the
//! error. The script turns signing on with `/DSign`; ISCC learns the tool with `/Scms=...`.
//!
//! Must never: sign a file outside `dist/`, sign for a caller without the token, or let the
//! signing secrets into ISCC's environment (it gets the port and the token only).

use crate::installer::windows_path;
use crate::loopback::LoopbackServer;
use crate::sign::{self, Signer};
use crate::wine;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Sign Tool's name in `build_scripts/installer.iss` (`SignTool=cms`).
const TOOL_NAME: &str = "cms";

/// How long one request may take to arrive (signhook.exe sends it at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The listener that signs for ISCC while it runs; stopped by [`SignHook::stop`].
#[derive(Debug)]
pub struct SignHook {
    server: LoopbackServer,
    token: String,
    helper: PathBuf,
}

impl SignHook {
    /// Builds signhook.exe and starts listening; only files under `allowed_dir` get signed.
    pub fn start(signer: Signer, allowed_dir: &Path) -> Result<Self> {
        let helper = wine::build_windows_program(
            "signhook/signhook.exe",
            &["-O2", "-s", "-municode"],
            &["signhook.c"],
            &["-lws2_32"],
        )
        .context("cannot build signhook.exe (ISCC's Sign Tool under Wine)")?;
        let allowed_dir = allowed_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", allowed_dir.display()))?;
        let token = sign::random_hex()?;
        let server = {
            let token = token.clone();
            LoopbackServer::start("sign hook", move |stream| {
                answer(stream, &token, &signer, &allowed_dir)
            })?
        };
        Ok(Self {
            server,
            token,
            helper,
        })
    }

    /// Makes the ISCC command `cmd` sign through this hook: `/DSign`, `/Scms=...`, the port and
    /// token in its environment.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.arg("/DSign")
            .arg(format!(
                "/S{TOOL_NAME}=$q{}$q $f",
                windows_path(&self.helper)
            ))
            .env(
                "CMS_SIGN_HOOK_PORT",
                self.server.address().port().to_string(),
            )
            .env("CMS_SIGN_HOOK_TOKEN", &self.token);
    }

    /// Stops the listener and waits for it.
    pub fn stop(self) -> Result<()> {
        self.server.stop()
    }
}

/// Removes every `CMS_SIGN_*` variable from `cmd`'s environment (for ISCC and Wine).
pub fn without_secrets(cmd: &mut Command) -> &mut Command {
    for variable in sign::ENV_VARS {
        cmd.env_remove(variable);
    }
    cmd
}

/// Reads `TOKEN PATH\n`, signs PATH, replies `ok` or `error: WHY`.
fn answer(stream: TcpStream, token: &str, signer: &Signer, allowed_dir: &Path) -> Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(16 * 1024)
        .read_line(&mut line)
        .context("reading the request")?;
    let reply = match sign_request(&line, token, signer, allowed_dir) {
        Ok(()) => "ok\n".to_string(),
        Err(e) => {
            eprintln!("sign hook: refused: {e:#}");
            format!("error: {e:#}\n")
        }
    };
    (&stream)
        .write_all(reply.as_bytes())
        .context("answering signhook.exe")
}

/// Checks the token and the path of one request, then signs the file.
fn sign_request(line: &str, token: &str, signer: &Signer, allowed_dir: &Path) -> Result<()> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (given, path) = line.split_once(' ').context("malformed request")?;
    if !same_token(given, token) {
        bail!("wrong token");
    }
    let path = unix_path(path)?;
    let path = path
        .canonicalize()
        .with_context(|| format!("no file {}", path.display()))?;
    if !path.starts_with(allowed_dir) {
        bail!("{} is outside {}", path.display(), allowed_dir.display());
    }
    signer.sign(&path)
}

/// Compares tokens in time independent of where they differ.
fn same_token(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// The Unix path of a path on Wine's `Z:` drive (the only drive ISCC is given paths on).
fn unix_path(windows: &str) -> Result<PathBuf> {
    let rest = windows
        .strip_prefix("Z:")
        .or_else(|| windows.strip_prefix("z:"))
        .with_context(|| format!("{windows} is not on Wine's Z: drive"))?;
    Ok(PathBuf::from(rest.replace('\\', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_drive_paths_map_back_to_unix_paths() {
        assert_eq!(
            unix_path(r"Z:\work\main\dist\uninst.e32.tmp").unwrap(),
            Path::new("/work/main/dist/uninst.e32.tmp")
        );
        assert!(unix_path(r"C:\users\x\Temp\a.exe").is_err());
    }

    #[test]
    fn tokens_must_match_exactly() {
        assert!(same_token("abc123", "abc123"));
        assert!(!same_token("abc124", "abc123"));
        assert!(!same_token("abc12", "abc123"));
        assert!(!same_token("", "abc123"));
    }
}
