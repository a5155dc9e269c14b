//! The rollback statement: the one thing that lets an agent install a version older than the
//! one it runs (a group pinned to an older release, `cms-server group pin`).
//!
//! It is signed like a TUF root, by the root role's keys (kept offline), over the canonical JSON
//! of `signed`, so the online signing keys and the database together still cannot downgrade an
//! agent: docs/SECURITY.md has the argument. Data only; this module must never verify (the agent
//! does, against the root it trusts) nor sign (the server's `release::rollback` does); it only
//! says which bytes are signed ([`RollbackTerms::canonical_bytes`]).

use serde::{Deserialize, Serialize};

/// The `_type` of a rollback statement's signed part.
pub const ROLLBACK_TYPE: &str = "cms-rollback";

/// What the root key holder allows: agents of `platform` may go back to `version` until
/// `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackTerms {
    /// Always [`ROLLBACK_TYPE`].
    #[serde(rename = "_type")]
    pub kind: String,
    /// The older release agents may install.
    pub version: String,
    /// Its platform.
    pub platform: String,
    /// RFC 3339 UTC; after it the statement allows nothing.
    pub expires: String,
}

impl RollbackTerms {
    /// The canonical JSON (TUF's, after OLPC) of the terms: the bytes that are signed and
    /// verified.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = Vec::new();
        let formatter = olpc_cjson::CanonicalFormatter::new();
        let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        self.serialize(&mut serializer)?;
        Ok(bytes)
    }
}

/// One signature over the canonical JSON of [`RollbackTerms`], as TUF writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackSignature {
    /// The TUF key id of the signing key (hex).
    pub keyid: String,
    /// The signature (hex).
    pub sig: String,
}

/// A signed rollback statement, sent with an offer of an older release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStatement {
    /// What is allowed.
    pub signed: RollbackTerms,
    /// Signatures by the root role's keys.
    pub signatures: Vec<RollbackSignature>,
}
