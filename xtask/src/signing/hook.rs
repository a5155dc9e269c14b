//! Inno Setup's Sign Tool hook, for `cargo xtask installer --sign`: ISCC signs the uninstaller
//! it embeds (which is also Setup's temporary self-copy), the programs it packs when they are
//! not signed yet (`signonce`), and the finished setup exe, all with the same [`Signer`] as
//! `dist --sign`.
//!
//! ISCC runs its Sign Tool for each file and waits for it. The Sign Tool is a small Windows
//! program (`xtask/wine/signhook.c` under Wine, where ISCC cannot wait for a Linux program;
//! this xtask's `sign-tool` on a Windows host) that sends a one-time token and the file's path
//! to a listener on 127.0.0.1 in this process, which signs the file and answers `ok` or the
//! error. The script turns signing on with `/DSign`; ISCC learns the tool with `/Scms=...`.
//!
//! Must never: sign a file outside the allowed folder (`dist/`), sign for a caller without the
//! token, or let the signing secrets into ISCC's environment (it gets the port and the token
//! only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::loopback::LoopbackServer;
use crate::signing::signer::Signer;
use crate::util;

/// How long one request may take to arrive (the Sign Tool sends it at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long signing one file may take, seen from the Sign Tool (a timestamp server is slow).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Turns the Sign Tool's path of a file into this machine's path.
pub type HostPath = fn(&str) -> Result<PathBuf>;

/// The listener that signs for ISCC while it runs; stopped by [`SignHook::stop`].
#[derive(Debug)]
pub struct SignHook {
    server: LoopbackServer,
    token: String,
}

impl SignHook {
    /// The Sign Tool's name in `build_scripts/installer.iss` (`SignTool=cms`).
    pub const TOOL_NAME: &str = "cms";
    /// The variable that tells the Sign Tool the listener's port.
    pub const PORT_VAR: &str = "CMS_SIGN_HOOK_PORT";
    /// The variable that tells the Sign Tool the one-time token.
    pub const TOKEN_VAR: &str = "CMS_SIGN_HOOK_TOKEN";

    /// Starts listening; only files under `allowed_dir` get signed. The Sign Tool names files
    /// as ISCC does; `host_path` maps them to this machine's paths.
    pub fn start(signer: Signer, allowed_dir: &Path, host_path: HostPath) -> Result<Self> {
        let allowed_dir = allowed_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", allowed_dir.display()))?;
        let token = util::random_hex()?;
        let server = {
            let token = token.clone();
            LoopbackServer::start("sign hook", move |stream| {
                let request = Request {
                    token: &token,
                    signer: &signer,
                    allowed_dir: &allowed_dir,
                    host_path,
                };
                request.answer(stream)
            })?
        };
        Ok(Self { server, token })
    }

    /// The variables the Sign Tool needs: the port and the token.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (Self::PORT_VAR, self.server.address().port().to_string()),
            (Self::TOKEN_VAR, self.token.clone()),
        ]
    }

    /// Stops the listener and waits for it.
    pub fn stop(self) -> Result<()> {
        self.server.stop()
    }
}

/// The Sign Tool's side: asks the hook on 127.0.0.1:`port` to sign `file` and waits for its
/// answer; an `error:` answer is an error.
pub fn request_signature(port: u16, token: &str, file: &str) -> Result<()> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("cannot reach the sign hook on port {port}"))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    (&stream).write_all(format!("{token} {file}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(16 * 1024)
        .read_line(&mut answer)
        .context("reading the sign hook's answer")?;
    match answer.trim_end() {
        "ok" => Ok(()),
        other => bail!("the sign hook did not sign {file}: {other}"),
    }
}

/// What one connection is checked against.
struct Request<'a> {
    token: &'a str,
    signer: &'a Signer,
    allowed_dir: &'a Path,
    host_path: HostPath,
}

impl Request<'_> {
    /// Reads `TOKEN PATH\n`, signs PATH, replies `ok` or `error: WHY`.
    fn answer(&self, stream: TcpStream) -> Result<()> {
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .take(16 * 1024)
            .read_line(&mut line)
            .context("reading the request")?;
        let reply = match self.sign(&line) {
            Ok(()) => "ok\n".to_string(),
            Err(e) => {
                eprintln!("sign hook: refused: {e:#}");
                format!("error: {e:#}\n")
            }
        };
        (&stream)
            .write_all(reply.as_bytes())
            .context("answering the Sign Tool")
    }

    /// Checks the token and the path of one request, then signs the file.
    fn sign(&self, line: &str) -> Result<()> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (given, path) = line.split_once(' ').context("malformed request")?;
        if !same_token(given, self.token) {
            bail!("wrong token");
        }
        let path = (self.host_path)(path)?;
        let resolved = path
            .canonicalize()
            .with_context(|| format!("no file {}", path.display()))?;
        if !resolved.starts_with(self.allowed_dir) {
            bail!(
                "{} is outside {}",
                resolved.display(),
                self.allowed_dir.display()
            );
        }
        // The path as ISCC named it: on Windows the resolved one is a `\\?\` path, which not
        // every signing tool takes.
        self.signer.sign(&path)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn tokens_must_match_exactly() {
        assert!(same_token("abc123", "abc123"));
        assert!(!same_token("abc124", "abc123"));
        assert!(!same_token("abc12", "abc123"));
        assert!(!same_token("", "abc123"));
    }

    /// The real listener and the Sign Tool's client: what must be refused is refused, before
    /// any signing tool runs.
    #[test]
    fn the_hook_refuses_a_wrong_token_and_a_file_outside_its_folder() -> Result<()> {
        let work = tempfile::tempdir()?;
        let (allowed, outside) = (work.path().join("dist"), work.path().join("other.exe"));
        std::fs::create_dir(&allowed)?;
        std::fs::write(&outside, "not to be signed")?;
        let pfx = work.path().join("test.pfx");
        std::fs::write(&pfx, "")?;
        // A signer whose tool is never run: every request below is refused first.
        std::fs::write(work.path().join("osslsigncode"), "")?;
        let vars = [
            ("CMS_SIGN_PFX", pfx.clone().into_os_string()),
            ("CMS_SIGN_PFX_PASSWORD", OsString::from("secret")),
            ("PATH", work.path().as_os_str().to_owned()),
        ];
        let signer = Signer::from_vars(&|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        })?;
        let hook = SignHook::start(signer, &allowed, |path| Ok(PathBuf::from(path)))?;
        let [(_, port), (_, token)] = hook.env();
        let port: u16 = port.parse()?;
        let file = outside.to_string_lossy();
        let wrong = request_signature(port, "0123", &file).unwrap_err();
        assert!(format!("{wrong:#}").contains("wrong token"), "{wrong:#}");
        let escaped = request_signature(port, &token, &file).unwrap_err();
        assert!(format!("{escaped:#}").contains("is outside"), "{escaped:#}");
        hook.stop()
    }
}
