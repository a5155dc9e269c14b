//! `cargo xtask sign-check`: proves, with a throwaway certificate, that what `dist --sign`,
//! `msi --sign` and `installer --sign` produce verifies, that one changed byte makes
//! verification fail, that `cms-server release publish` carries the signed exes byte for byte,
//! and that no password or key reaches the tasks' output.
//!
//! A throwaway CA and a code-signing certificate it issued (two days, RSA 3072) are made with
//! `openssl` in `target/sign-check/`; the tasks then run as an operator runs them, this program
//! started again with the `CMS_SIGN_*` variables set: `dist --target windows --sign` with the PEM
//! pair, again with the PFX and its password, then `msi --sign` and `installer --sign` with the
//! PFX. Every artifact is checked with `osslsigncode verify -CAfile` against the throwaway CA.
//!
//! Leaves `dist/` holding signed Windows exes, a signed MSI and a signed setup exe (the Linux binaries that an
//! earlier `dist` put there are removed: `dist` starts clean). Without 32-bit Wine the installer
//! part prints `SKIPPED` and the task exits with 77 once everything else has passed.
//!
//! Must never: call a signature good that `osslsigncode verify` did not accept, or put the
//! throwaway key or password anywhere but its work folder and the child tasks' environment.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cms_protocol::update::{executable_names, package_file_name};

use crate::build::{self, SHIPPED, WINDOWS};
use crate::checks::{self, Checks};
use crate::dist_tree;
use crate::flags;
use crate::server::{Release, Server, ServerOutput};
use crate::signing::signer;
use crate::util::{self, output_timeout};
use crate::windows::inno;

/// Time one child task may take (a cold `dist` release-builds both exes for Windows).
const TASK_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Time one `openssl` or `osslsigncode verify` run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// `cargo xtask sign-check` (no options).
pub fn run(args: &[String]) -> Result<()> {
    flags::reject_rest("sign-check", args)?;
    let work = util::target_dir().join("sign-check");
    util::remove_dir_if_exists(&work)?;
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let ca = ThrowawayCa::create(&work)?;
    let mut checks = Checks::default();
    check_dist(
        &mut checks,
        &ca,
        "CMS_SIGN_CERT + CMS_SIGN_KEY",
        &ca.pem_env(),
    )?;
    check_dist(&mut checks, &ca, "CMS_SIGN_PFX", &ca.pfx_env())?;
    let agent = dist_tree::binary(&WINDOWS, "cms_agent");
    checks.check("a changed byte in a signed exe fails verification", || {
        tampered_copy_fails(&ca, &agent, &work)
    });
    checks.check(
        "release publish packs the signed exes byte for byte, and they verify",
        || publish_keeps_signatures(&ca, &work),
    );
    check_msi(&mut checks, &ca, &work)?;
    if let Err(reason) = inno::availability() {
        checks.finish("sign-check")?;
        checks::skip("sign-check of the installer", &reason);
    }
    check_installer(&mut checks, &ca, &work)?;
    checks.finish("sign-check")
}

/// `dist --target windows --sign` with the credentials in `env`: both exes verify, and the
/// task's output holds no secret.
fn check_dist(
    checks: &mut Checks,
    ca: &ThrowawayCa,
    how: &str,
    env: &[(&str, &OsStr)],
) -> Result<()> {
    let output = run_task(&["dist", "--target", "windows", "--sign"], env)?;
    for (_, binary) in SHIPPED {
        let exe = dist_tree::binary(&WINDOWS, binary);
        checks.check(
            format!("dist --sign with {how}: {binary}.exe verifies"),
            || ca.verify(&exe),
        );
    }
    checks.check(
        format!("dist --sign with {how}: no secret in the output"),
        || ca.require_no_secret(&output),
    );
    Ok(())
}

/// `installer --sign` with the PFX: the setup exe verifies, a changed byte in it fails, and
/// the output holds no secret.
fn check_installer(checks: &mut Checks, ca: &ThrowawayCa, work: &Path) -> Result<()> {
    let output = run_task(&["installer", "--sign"], &ca.pfx_env())?;
    let setup = dist_tree::setup_exe(&dist_tree::version()?);
    checks.check("installer --sign: the setup exe verifies", || {
        ca.verify(&setup)
    });
    checks.check(
        "a changed byte in the signed setup exe fails verification",
        || tampered_copy_fails(ca, &setup, work),
    );
    checks.check("installer --sign: no secret in the output", || {
        ca.require_no_secret(&output)
    });
    Ok(())
}

/// `msi --sign` with the PFX: the MSI verifies, a changed byte in its cabinet fails, and the
/// output holds no secret.
fn check_msi(checks: &mut Checks, ca: &ThrowawayCa, work: &Path) -> Result<()> {
    let output = run_task(&["msi", "--sign"], &ca.pfx_env())?;
    let msi = dist_tree::msi(&dist_tree::version()?);
    checks.check("msi --sign: the MSI verifies", || ca.verify(&msi));
    checks.check(
        "a changed byte in the signed MSI fails verification",
        || tampered_msi_fails(ca, &msi, work),
    );
    checks.check("msi --sign: no secret in the output", || {
        ca.require_no_secret(&output)
    });
    Ok(())
}

/// Copies the signed MSI into `work` with its middle byte changed (inside the embedded
/// cabinet, most of the file, which the signature covers) and requires verification to fail.
fn tampered_msi_fails(ca: &ThrowawayCa, signed: &Path, work: &Path) -> Result<()> {
    let mut bytes =
        fs::read(signed).with_context(|| format!("cannot read {}", signed.display()))?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let tampered = work
        .join("tampered")
        .join(signed.file_name().context("a file name")?);
    fs::create_dir_all(tampered.parent().context("a parent")?)?;
    fs::write(&tampered, &bytes).with_context(|| format!("cannot write {}", tampered.display()))?;
    match ca.verify(&tampered) {
        Ok(()) => bail!("{} verified with byte {at:#x} changed", tampered.display()),
        Err(_) => Ok(()),
    }
}

/// Runs this program again as `cargo xtask <args>` with `env` added; prints its output and
/// returns it. A failed task is an error.
fn run_task(args: &[&str], env: &[(&str, &OsStr)]) -> Result<Output> {
    let xtask = std::env::current_exe().context("cannot find the running xtask")?;
    let mut cmd = Command::new(xtask);
    cmd.args(args).current_dir(util::project_root());
    signer::without_secrets(&mut cmd);
    for (name, value) in env {
        cmd.env(name, value);
    }
    println!("==> cargo xtask {} ({})", args.join(" "), env_names(env));
    let output = output_timeout(&mut cmd, TASK_TIMEOUT)?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!(
            "cargo xtask {} failed with {}",
            args.join(" "),
            output.status
        );
    }
    Ok(output)
}

fn env_names(env: &[(&str, &OsStr)]) -> String {
    env.iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies `signed` into `work`, changes one byte outside its signature and requires
/// `osslsigncode verify` to refuse the copy.
fn tampered_copy_fails(ca: &ThrowawayCa, signed: &Path, work: &Path) -> Result<()> {
    let mut bytes =
        fs::read(signed).with_context(|| format!("cannot read {}", signed.display()))?;
    let signature = signer::signature_range(&bytes)?
        .with_context(|| format!("{} carries no signature", signed.display()))?;
    let at = signature.start / 2; // inside the image, well past the headers
    bytes[at] ^= 0x01;
    let name = signed.file_name().context("a file name")?;
    let tampered = work.join("tampered").join(name);
    fs::create_dir_all(tampered.parent().context("a parent")?)?;
    fs::write(&tampered, &bytes).with_context(|| format!("cannot write {}", tampered.display()))?;
    match ca.verify(&tampered) {
        Ok(()) => bail!("{} verified with byte {at:#x} changed", tampered.display()),
        Err(_) => Ok(()),
    }
}

/// Publishes the signed exes with the real `cms-server` and compares what the package holds.
fn publish_keeps_signatures(ca: &ThrowawayCa, work: &Path) -> Result<()> {
    let data = work.join("server");
    let version = dist_tree::version()?;
    let (agent, updater) = (
        dist_tree::binary(&WINDOWS, "cms_agent"),
        dist_tree::binary(&WINDOWS, "updater"),
    );
    Server::new(&build::server()?, &data, ServerOutput::Print).publish(&Release {
        version: &version,
        platform: Some(WINDOWS.name),
        agent: &agent,
        updater: &updater,
    })?;
    let package = data
        .join("packages")
        .join(WINDOWS.name)
        .join(&version)
        .join(package_file_name(&version, WINDOWS.name));
    let (agent_name, updater_name) = executable_names(WINDOWS.name);
    for (name, original) in [(agent_name, &agent), (updater_name, &updater)] {
        let packed = work.join("unpacked").join(name);
        extract(&package, name, &packed)?;
        if fs::read(&packed)? != fs::read(original)? {
            bail!(
                "{name} in {} differs from {}",
                package.display(),
                original.display()
            );
        }
        ca.verify(&packed)?;
    }
    Ok(())
}

/// Writes entry `name` of the zip file `package` to `out`.
fn extract(package: &Path, name: &str, out: &Path) -> Result<()> {
    let file =
        fs::File::open(package).with_context(|| format!("cannot open {}", package.display()))?;
    let mut archive = zip::ZipArchive::new(file)?;
    let mut entry = archive
        .by_name(name)
        .with_context(|| format!("{} has no {name}", package.display()))?;
    fs::create_dir_all(out.parent().context("a parent")?)?;
    let mut target = fs::File::create(out)?;
    std::io::copy(&mut entry, &mut target)?;
    Ok(())
}

/// A CA and a code-signing certificate made for this run only, in `work/`.
#[derive(Debug)]
struct ThrowawayCa {
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pfx: PathBuf,
    password_file: PathBuf,
    password: String,
}

impl ThrowawayCa {
    /// Creates the CA, the signing key and certificate, and a PFX of both under a random
    /// password.
    fn create(work: &Path) -> Result<Self> {
        let ca = Self {
            ca_cert: work.join("ca.pem"),
            cert: work.join("codesign.pem"),
            key: work.join("codesign.key"),
            pfx: work.join("codesign.pfx"),
            password_file: work.join("pfx-password"),
            password: util::random_hex()?,
        };
        fs::write(&ca.password_file, &ca.password)?;
        let ca_key = work.join("ca.key");
        let csr = work.join("codesign.csr");
        let extensions = work.join("codesign.ext");
        fs::write(
            &extensions,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=codeSigning\n",
        )?;
        openssl(
            &[
                "req", "-x509", "-newkey", "rsa:3072", "-noenc", "-days", "2",
            ],
            |c| {
                c.arg("-keyout")
                    .arg(&ca_key)
                    .arg("-out")
                    .arg(&ca.ca_cert)
                    .args([
                        "-subj",
                        "/CN=CMS Agent sign-check throwaway CA",
                        "-addext",
                        "basicConstraints=critical,CA:TRUE",
                        "-addext",
                        "keyUsage=critical,keyCertSign,cRLSign",
                    ])
            },
        )?;
        openssl(&["req", "-new", "-newkey", "rsa:3072", "-noenc"], |c| {
            c.arg("-keyout")
                .arg(&ca.key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", "/CN=CMS Agent sign-check throwaway code signing"])
        })?;
        openssl(&["x509", "-req", "-days", "2", "-set_serial", "2"], |c| {
            c.arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca.ca_cert)
                .arg("-CAkey")
                .arg(&ca_key);
            c.arg("-extfile").arg(&extensions).arg("-out").arg(&ca.cert)
        })?;
        openssl(&["pkcs12", "-export"], |c| {
            c.arg("-inkey").arg(&ca.key).arg("-in").arg(&ca.cert);
            c.arg("-certfile").arg(&ca.ca_cert).arg("-out").arg(&ca.pfx);
            c.arg("-passout")
                .arg(format!("file:{}", ca.password_file.display()))
        })?;
        Ok(ca)
    }

    /// The variables for signing with the PEM certificate and key.
    fn pem_env(&self) -> Vec<(&'static str, &OsStr)> {
        vec![
            ("CMS_SIGN_CERT", self.cert.as_os_str()),
            ("CMS_SIGN_KEY", self.key.as_os_str()),
        ]
    }

    /// The variables for signing with the PFX; the password travels as a variable's value, as
    /// an operator's would.
    fn pfx_env(&self) -> Vec<(&'static str, &OsStr)> {
        vec![
            ("CMS_SIGN_PFX", self.pfx.as_os_str()),
            ("CMS_SIGN_PFX_PASSWORD", OsStr::new(&self.password)),
        ]
    }

    /// `osslsigncode verify` of `file` against this CA.
    fn verify(&self, file: &Path) -> Result<()> {
        let mut cmd = Command::new("osslsigncode");
        cmd.args(["verify", "-CAfile"])
            .arg(&self.ca_cert)
            .arg("-in")
            .arg(file);
        let output = output_timeout(&mut cmd, TOOL_TIMEOUT)?;
        if !output.status.success() {
            bail!(
                "osslsigncode verify refused {}: {}",
                file.display(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(())
    }

    /// Fails if `output` holds the password or any private key material.
    fn require_no_secret(&self, output: &Output) -> Result<()> {
        let key = fs::read_to_string(&self.key)?;
        let key_line = key
            .lines()
            .find(|line| !line.starts_with("-----") && line.len() > 32)
            .context("the key file holds no base64 line")?;
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            if text.contains(&self.password) {
                bail!("the PFX password appears in the output");
            }
            if text.contains(key_line) || text.contains("PRIVATE KEY") {
                bail!("private key material appears in the output");
            }
        }
        Ok(())
    }
}

/// `openssl <args>` with more arguments added by `more`; quiet unless it fails.
fn openssl(args: &[&str], more: impl FnOnce(&mut Command) -> &mut Command) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    more(&mut cmd);
    let output = output_timeout(&mut cmd, TOOL_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
