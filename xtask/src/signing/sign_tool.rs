//! `cargo xtask sign-tool FILE` (not for people): Inno Setup's Sign Tool on a Windows host.
//! ISCC runs it for each file to sign, with the hook's port and token in its environment
//! ([`crate::signing::hook`]); it asks the hook in the `installer --sign` process to sign the
//! file and exits 0 once it has. Under Wine, `xtask/wine/signhook.c` does the same job.
//!
//! Must never: sign anything itself, or read the signing secrets (the hook holds them).

use anyhow::{Context, Result, bail};

use crate::signing::hook::{self, SignHook};

/// `cargo xtask sign-tool FILE`.
pub fn run(args: &[String]) -> Result<()> {
    let [file] = args else {
        bail!("sign-tool takes the file to sign (ISCC's $f), and is run by ISCC only");
    };
    let var = |name: &str| {
        std::env::var(name).with_context(|| {
            format!(
                "{name} is not set: sign-tool is run by ISCC during `cargo xtask installer --sign`"
            )
        })
    };
    let port = var(SignHook::PORT_VAR)?
        .parse()
        .with_context(|| format!("{} is not a port", SignHook::PORT_VAR))?;
    hook::request_signature(port, &var(SignHook::TOKEN_VAR)?, file)
}
