//! Authenticode signing of the Windows executables we ship (`dist --sign`, `installer --sign`).
//!
//! The operator's certificate comes from environment variables only, never from flags, so that
//! no secret lands in shell history or in a command line we print:
//!
//! | variable | meaning |
//! |---|---|
//! | `CMS_SIGN_PFX` | PKCS#12 file with the code-signing certificate (and chain) and its key |
//! | `CMS_SIGN_PFX_PASSWORD` | the PFX's password (required with `CMS_SIGN_PFX`; may be empty) |
//! | `CMS_SIGN_CERT` + `CMS_SIGN_KEY` | instead of a PFX: PEM certificate (chain) and PEM key |
//! | `CMS_SIGN_KEY_PASSWORD` | the PEM key's password, when the key is encrypted |
//! | `CMS_SIGN_TIMESTAMP_URL` | RFC 3161 timestamp server: every signature is timestamped |
//! | `CMS_SIGNTOOL` | Windows: `signtool.exe` to use when it is not on `PATH` |
//!
//! Backends: Debian's `osslsigncode`; on Windows `signtool.exe` when present (PFX only; without
//! it, osslsigncode). Files are signed in place: osslsigncode writes a temp file next to the
//! file, which is then renamed over it.
//!
//! Must never: put a password or key into an error message, a log or a command line we print.
//! osslsigncode reads the password from a 0600 temp file (`-readpass`, deleted afterwards);
//! signtool can only take it on its own command line (`/p`), so the line we print says where the
//! password came from instead.

use anyhow::{Context, Result, bail};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util;

/// Every variable this module reads; tools that must not see the secrets run without them
/// ([`without_secrets`]).
const ENV_VARS: [&str; 7] = [
    "CMS_SIGN_PFX",
    "CMS_SIGN_PFX_PASSWORD",
    "CMS_SIGN_CERT",
    "CMS_SIGN_KEY",
    "CMS_SIGN_KEY_PASSWORD",
    "CMS_SIGN_TIMESTAMP_URL",
    "CMS_SIGNTOOL",
];

/// Removes every `CMS_SIGN_*` variable from `cmd`'s environment.
pub fn without_secrets(cmd: &mut Command) -> &mut Command {
    for variable in ENV_VARS {
        cmd.env_remove(variable);
    }
    cmd
}

/// The description put into each signature (what Windows shows as the program's name).
const DESCRIPTION: &str = "CMS Agent";

/// A password read from the environment; its `Debug` names the variable, never the value.
struct Secret {
    value: OsString,
    variable: &'static str,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<${}>", self.variable)
    }
}

/// The operator's certificate and key.
#[derive(Debug)]
enum Credentials {
    /// A PKCS#12 file and its password.
    Pfx { file: PathBuf, password: Secret },
    /// PEM certificate (chain) and PEM private key, with the key's password if it is encrypted.
    Pem {
        cert: PathBuf,
        key: PathBuf,
        password: Option<Secret>,
    },
}

/// The program that applies signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tool {
    /// `osslsigncode` (Debian's package; also built for Windows).
    Osslsigncode(PathBuf),
    /// The Windows SDK's `signtool.exe`.
    Signtool(PathBuf),
}

/// Signs files with the operator's certificate; made once per task from the environment.
#[derive(Debug)]
pub struct Signer {
    credentials: Credentials,
    timestamp_url: Option<String>,
    tool: Tool,
}

impl Signer {
    /// The signer the `CMS_SIGN_*` variables describe; errors say which variable to set.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(&|name| std::env::var_os(name))
    }

    /// The signer the variables `lookup` returns describe (`CMS_SIGN_*` and `PATH`).
    pub fn from_vars(lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Self> {
        let credentials = credentials(lookup)?;
        let tool = choose_tool(&credentials, lookup)?;
        let timestamp_url = match lookup("CMS_SIGN_TIMESTAMP_URL") {
            Some(url) if !url.is_empty() => Some(
                url.into_string()
                    .map_err(|_| anyhow::anyhow!("CMS_SIGN_TIMESTAMP_URL is not UTF-8"))?,
            ),
            _ => None,
        };
        Ok(Self {
            credentials,
            timestamp_url,
            tool,
        })
    }

    /// What signs with what, for the task's output (paths and URL only, never secrets).
    pub fn summary(&self) -> String {
        let (program, what) = match (&self.tool, &self.credentials) {
            (Tool::Osslsigncode(p) | Tool::Signtool(p), Credentials::Pfx { file, .. }) => {
                (p, format!("PFX {}", file.display()))
            }
            (Tool::Osslsigncode(p) | Tool::Signtool(p), Credentials::Pem { cert, .. }) => {
                (p, format!("certificate {}", cert.display()))
            }
        };
        let timestamp = match &self.timestamp_url {
            Some(url) => format!("timestamp server {url}"),
            None => "no timestamp (CMS_SIGN_TIMESTAMP_URL is not set)".to_string(),
        };
        format!("{} with the {what}, {timestamp}", program.display())
    }

    /// Authenticode-signs `file` in place (SHA-256, timestamped when a server is configured).
    pub fn sign(&self, file: &Path) -> Result<()> {
        match &self.tool {
            Tool::Osslsigncode(program) => self.sign_with_osslsigncode(program, file),
            Tool::Signtool(program) => self.signtool_call(program, file)?.run(),
        }
        .with_context(|| format!("cannot sign {}", file.display()))?;
        eprintln!("sign: signed {}", file.display());
        Ok(())
    }

    /// osslsigncode into `<file>.signing`, then renamed over `file` (keeping its permissions).
    fn sign_with_osslsigncode(&self, program: &Path, file: &Path) -> Result<()> {
        let password_file = self.password().map(write_password_file).transpose()?;
        let mut name = file.as_os_str().to_owned();
        name.push(".signing");
        let signed = PathBuf::from(name);
        let call = self.osslsigncode_call(
            program,
            file,
            &signed,
            password_file.as_ref().map(|f| f.path()),
        );
        let result = call
            .run()
            .and_then(|()| replace_keeping_mode(&signed, file));
        if result.is_err() {
            // Best effort: the error that matters is the signing one.
            let _ = fs::remove_file(&signed);
        }
        result
    }

    /// The password, if the credentials have one.
    fn password(&self) -> Option<&Secret> {
        match &self.credentials {
            Credentials::Pfx { password, .. } => Some(password),
            Credentials::Pem { password, .. } => password.as_ref(),
        }
    }

    /// `osslsigncode sign ... -in file -out signed`; the password only by file name.
    fn osslsigncode_call(
        &self,
        program: &Path,
        file: &Path,
        signed: &Path,
        password_file: Option<&Path>,
    ) -> ToolCall {
        let mut call = ToolCall::new(program, &["sign"]);
        match &self.credentials {
            Credentials::Pfx { file: pfx, .. } => call.arg("-pkcs12").arg(pfx),
            Credentials::Pem { cert, key, .. } => call.arg("-certs").arg(cert).arg("-key").arg(key),
        };
        if let Some(path) = password_file {
            call.arg("-readpass").arg(path);
        }
        call.args(&["-h", "sha256", "-n", DESCRIPTION]);
        if let Some(url) = &self.timestamp_url {
            call.arg("-ts").arg(url);
        }
        call.arg("-in").arg(file).arg("-out").arg(signed);
        call
    }

    /// `signtool sign /fd sha256 /f PFX /p PASSWORD ... file` (signs in place).
    fn signtool_call(&self, program: &Path, file: &Path) -> Result<ToolCall> {
        let Credentials::Pfx {
            file: pfx,
            password,
        } = &self.credentials
        else {
            bail!("signtool signs with a PFX only: set CMS_SIGN_PFX, or install osslsigncode");
        };
        let mut call = ToolCall::new(program, &["sign", "/fd", "sha256", "/d", DESCRIPTION]);
        call.arg("/f").arg(pfx);
        if !password.value.is_empty() {
            call.arg("/p").secret(password);
        }
        if let Some(url) = &self.timestamp_url {
            call.arg("/tr").arg(url).args(&["/td", "sha256"]);
        }
        call.arg(file);
        Ok(call)
    }
}

/// One run of a signing tool: its arguments, and what to print instead of a secret argument.
#[derive(Debug)]
struct ToolCall {
    program: PathBuf,
    args: Vec<OsString>,
    /// `args[i]` is a secret; the printed line shows `shown` there.
    redacted: Vec<(usize, String)>,
}

impl ToolCall {
    fn new(program: &Path, args: &[&str]) -> Self {
        let mut call = Self {
            program: program.to_path_buf(),
            args: Vec::new(),
            redacted: Vec::new(),
        };
        call.args(args);
        call
    }

    fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    fn args(&mut self, args: &[&str]) -> &mut Self {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    /// A secret argument: passed to the tool, shown as `<$VARIABLE>`.
    fn secret(&mut self, secret: &Secret) -> &mut Self {
        self.redacted.push((self.args.len(), format!("{secret:?}")));
        self.arg(&secret.value)
    }

    /// The command line as it may be printed: secrets replaced.
    fn shown(&self) -> String {
        let mut parts = vec![self.program.display().to_string()];
        for (i, arg) in self.args.iter().enumerate() {
            match self.redacted.iter().find(|(at, _)| *at == i) {
                Some((_, shown)) => parts.push(shown.clone()),
                None => parts.push(arg.to_string_lossy().into_owned()),
            }
        }
        parts.join(" ")
    }

    /// Runs the tool (output to ours), printing and reporting only [`ToolCall::shown`].
    fn run(&self) -> Result<()> {
        let shown = self.shown();
        eprintln!("$ {shown}");
        let status = Command::new(&self.program)
            .args(&self.args)
            .status()
            .with_context(|| format!("cannot start {shown}"))?;
        if !status.success() {
            bail!("{shown} failed with {status}");
        }
        Ok(())
    }
}

/// Reads the credentials from `lookup` (the environment, or a test's map).
fn credentials(lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Credentials> {
    let path = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let secret = |variable: &'static str| lookup(variable).map(|value| Secret { value, variable });
    let credentials = match (path("CMS_SIGN_PFX"), path("CMS_SIGN_CERT"), path("CMS_SIGN_KEY")) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            bail!("set either CMS_SIGN_PFX or CMS_SIGN_CERT + CMS_SIGN_KEY, not both")
        }
        (Some(file), None, None) => Credentials::Pfx {
            file,
            password: secret("CMS_SIGN_PFX_PASSWORD").context(
                "CMS_SIGN_PFX is set but CMS_SIGN_PFX_PASSWORD is not (set it, empty if the PFX has no password)",
            )?,
        },
        (None, Some(cert), Some(key)) => Credentials::Pem {
            cert,
            key,
            password: secret("CMS_SIGN_KEY_PASSWORD"),
        },
        (None, Some(_), None) | (None, None, Some(_)) => {
            bail!("CMS_SIGN_CERT and CMS_SIGN_KEY go together: set both (PEM files)")
        }
        (None, None, None) => bail!(
            "--sign needs a code-signing certificate: set CMS_SIGN_PFX and \
             CMS_SIGN_PFX_PASSWORD, or CMS_SIGN_CERT and CMS_SIGN_KEY (PEM files)"
        ),
    };
    let files: Vec<(&str, &PathBuf)> = match &credentials {
        Credentials::Pfx { file, .. } => vec![("CMS_SIGN_PFX", file)],
        Credentials::Pem { cert, key, .. } => vec![("CMS_SIGN_CERT", cert), ("CMS_SIGN_KEY", key)],
    };
    for (variable, file) in files {
        if !file.is_file() {
            bail!("{variable} names {}, which is not a file", file.display());
        }
    }
    Ok(credentials)
}

/// signtool on Windows when it is there and the credentials are a PFX; otherwise osslsigncode.
fn choose_tool(
    credentials: &Credentials,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Tool> {
    let path = lookup("PATH").unwrap_or_default();
    if cfg!(windows) && matches!(credentials, Credentials::Pfx { .. }) {
        let signtool = match lookup("CMS_SIGNTOOL").filter(|v| !v.is_empty()) {
            Some(explicit) => Some(PathBuf::from(explicit)),
            None => util::find_on_path(&path, "signtool.exe"),
        };
        if let Some(program) = signtool {
            return Ok(Tool::Signtool(program));
        }
    }
    let name = format!("osslsigncode{}", std::env::consts::EXE_SUFFIX);
    util::find_on_path(&path, &name)
        .map(Tool::Osslsigncode)
        .context(
            "no signing tool: install osslsigncode (Debian: apt-get install osslsigncode); on \
         Windows signtool.exe from the Windows SDK also works (on PATH or CMS_SIGNTOOL)",
        )
}

/// The password in a new temp file only we can read (0600 on Unix), deleted when dropped.
fn write_password_file(password: &Secret) -> Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("cms-sign-")
        .tempfile()
        .context("cannot create a temp file for the signing password")?;
    file.write_all(password.value.as_encoded_bytes())
        .and_then(|()| file.flush())
        .context("cannot write the signing password's temp file")?;
    Ok(file)
}

/// Renames `signed` over `original`, with `original`'s permissions (dist's exes are 0755).
fn replace_keeping_mode(signed: &Path, original: &Path) -> Result<()> {
    let permissions = fs::metadata(original)
        .with_context(|| format!("cannot read {}", original.display()))?
        .permissions();
    fs::set_permissions(signed, permissions)
        .with_context(|| format!("cannot set the permissions of {}", signed.display()))?;
    fs::rename(signed, original)
        .with_context(|| format!("cannot move {} to {}", signed.display(), original.display()))
}

/// Where the Authenticode signature (the PE certificate table) is in the PE file `pe`, if it
/// has one. Errors when `pe` is not a PE file or the table points outside it.
pub fn signature_range(pe: &[u8]) -> Result<Option<Range<usize>>> {
    let u16_at = |at: usize| pe.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| {
        pe.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let header = u32_at(0x3c)
        .filter(|_| pe.starts_with(b"MZ"))
        .context("not a PE file (no MZ header)")?;
    if pe.get(header..header + 4) != Some(b"PE\0\0".as_slice()) {
        bail!("not a PE file (no PE signature at {header:#x})");
    }
    let optional = header + 24;
    // (offset of NumberOfRvaAndSizes, offset of the data directories) in the optional header
    let (count_at, directories) = match u16_at(optional) {
        Some(0x10b) => (optional + 92, optional + 96),
        Some(0x20b) => (optional + 108, optional + 112),
        other => bail!("unknown PE optional header magic {other:?}"),
    };
    const SECURITY_DIRECTORY: usize = 4;
    if u32_at(count_at).context("truncated PE header")? <= SECURITY_DIRECTORY {
        return Ok(None);
    }
    let entry = directories + SECURITY_DIRECTORY * 8;
    let (offset, size) = (u32_at(entry), u32_at(entry + 4));
    match (offset, size) {
        (_, Some(0)) => Ok(None),
        (Some(offset), Some(size)) if offset.checked_add(size).is_some_and(|e| e <= pe.len()) => {
            Ok(Some(offset..offset + size))
        }
        _ => bail!("the PE certificate table points outside the file"),
    }
}

/// Fails unless the PE file `path` carries an Authenticode signature (not checked here: that
/// is `osslsigncode verify`'s job, done by `cargo xtask sign-check`).
pub fn require_signature(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match signature_range(&bytes).with_context(|| path.display().to_string())? {
        Some(_) => Ok(()),
        None => bail!("{} is not signed", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn existing_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn credentials_come_from_one_complete_set_of_variables() {
        let pfx = existing_file();
        let pfx = pfx.path().to_str().unwrap();
        let ok = credentials(&lookup(&[
            ("CMS_SIGN_PFX", pfx),
            ("CMS_SIGN_PFX_PASSWORD", "hunter2"),
        ]));
        assert!(matches!(ok, Ok(Credentials::Pfx { .. })));
        let cases: [&[(&str, &str)]; 5] = [
            &[],
            &[("CMS_SIGN_PFX", pfx)],
            &[("CMS_SIGN_CERT", pfx)],
            &[
                ("CMS_SIGN_PFX", pfx),
                ("CMS_SIGN_PFX_PASSWORD", "hunter2"),
                ("CMS_SIGN_KEY", pfx),
            ],
            &[
                ("CMS_SIGN_PFX", "/no/such.pfx"),
                ("CMS_SIGN_PFX_PASSWORD", "hunter2"),
            ],
        ];
        for vars in cases {
            let err = credentials(&lookup(vars)).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("CMS_SIGN_"), "{text}");
            assert!(!text.contains("hunter2"), "the password leaked: {text}");
        }
    }

    #[test]
    fn the_password_never_appears_in_a_printed_command_line() {
        let pfx = existing_file();
        let signer = Signer {
            credentials: Credentials::Pfx {
                file: pfx.path().to_path_buf(),
                password: Secret {
                    value: "hunter2".into(),
                    variable: "CMS_SIGN_PFX_PASSWORD",
                },
            },
            timestamp_url: Some("http://tsa.example/".into()),
            tool: Tool::Osslsigncode("osslsigncode".into()),
        };
        let signtool = signer
            .signtool_call(Path::new("signtool.exe"), Path::new("a.exe"))
            .unwrap();
        assert!(signtool.args.iter().any(|a| a == "hunter2"));
        assert!(
            !signtool.shown().contains("hunter2"),
            "{}",
            signtool.shown()
        );
        assert!(signtool.shown().contains("/p <$CMS_SIGN_PFX_PASSWORD>"));
        let pass_file = Path::new("/tmp/pw");
        let ossl = signer.osslsigncode_call(
            Path::new("osslsigncode"),
            Path::new("a.exe"),
            Path::new("a.exe.signing"),
            Some(pass_file),
        );
        assert!(!ossl.args.iter().any(|a| a == "hunter2"));
        assert!(ossl.shown().contains("-readpass /tmp/pw -h sha256"));
        assert!(ossl.shown().contains("-ts http://tsa.example/"));
        assert!(!format!("{signer:?}").contains("hunter2"));
    }

    #[test]
    fn the_password_file_is_private_and_exact() {
        let secret = Secret {
            value: "s3cret pass".into(),
            variable: "CMS_SIGN_PFX_PASSWORD",
        };
        let file = write_password_file(&secret).unwrap();
        assert_eq!(fs::read(file.path()).unwrap(), b"s3cret pass");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
    }

    /// A minimal PE32+ header whose security directory is (`offset`, `size`).
    fn pe(offset: u32, size: u32, len: usize) -> Vec<u8> {
        let mut pe = vec![0u8; len];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let optional = 0x80 + 24;
        pe[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[optional + 108..optional + 112].copy_from_slice(&16u32.to_le_bytes());
        let entry = optional + 112 + 4 * 8;
        pe[entry..entry + 4].copy_from_slice(&offset.to_le_bytes());
        pe[entry + 4..entry + 8].copy_from_slice(&size.to_le_bytes());
        pe
    }

    #[test]
    fn the_certificate_table_is_found_in_the_pe_header() {
        assert_eq!(
            signature_range(&pe(0x300, 0x100, 0x400)).unwrap(),
            Some(0x300..0x400)
        );
        assert_eq!(signature_range(&pe(0, 0, 0x400)).unwrap(), None);
        assert!(signature_range(&pe(0x300, 0x200, 0x400)).is_err());
        assert!(signature_range(b"not a pe file at all, just some text here....").is_err());
    }
}
