//! Authenticode signing: the signer itself ([`signer`]), the Sign Tool hook through which ISCC
//! signs the installer ([`hook`]), and the tasks built on them: `sign-check` and ISCC's
//! `sign-tool`.

pub mod hook;
pub mod sign_check;
pub mod sign_tool;
pub mod signer;
