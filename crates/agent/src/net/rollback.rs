//! Checking a rollback statement (`cms_protocol::RollbackStatement`): the only thing that lets
//! this agent install a version older than the one it runs.
//!
//! The statement must name the offered version and platform, be unexpired, and carry a
//! threshold of valid Ed25519 signatures, over the canonical JSON of its terms, by the keys the
//! trusted TUF root names for the **root** role (kept offline by the operator). The online
//! keys (targets, snapshot, timestamp) and the server's database cannot make one. This module
//! must never accept a statement signed by any other key, and never decide anything else.

use std::collections::HashSet;

use cms_protocol::{ROLLBACK_TYPE, RollbackStatement, UpdateInfo};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tough::schema::key::Key;
use tough::schema::{RoleType, Root};

/// Why a rollback statement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RollbackRefused {
    /// Not a statement of the right type, or for another version or platform.
    #[error("the rollback statement is for {found}, not {offered}")]
    OtherRelease {
        /// What it names.
        found: String,
        /// What was offered.
        offered: String,
    },
    /// Its expiry has passed or does not parse.
    #[error("the rollback statement expired ({0})")]
    Expired(String),
    /// Fewer valid signatures by root keys than the root's threshold.
    #[error(
        "the rollback statement has {valid} valid signature(s) by the root key(s), {threshold} \
         needed: only the offline root key may allow going back"
    )]
    NotSignedByRoot {
        /// Valid root signatures found.
        valid: usize,
        /// The root role's threshold.
        threshold: u64,
    },
}

/// Checks `statement` for `offer` against the trusted `root` at `now`.
pub fn check(
    root: &Root,
    statement: &RollbackStatement,
    offer: &UpdateInfo,
    now: OffsetDateTime,
) -> Result<(), RollbackRefused> {
    let terms = &statement.signed;
    if terms.kind != ROLLBACK_TYPE
        || terms.version != offer.version
        || terms.platform != offer.platform
    {
        return Err(RollbackRefused::OtherRelease {
            found: format!("{} {} {}", terms.kind, terms.version, terms.platform),
            offered: format!("{ROLLBACK_TYPE} {} {}", offer.version, offer.platform),
        });
    }
    let expires = OffsetDateTime::parse(&terms.expires, &Rfc3339)
        .map_err(|_| RollbackRefused::Expired(terms.expires.clone()))?;
    if expires <= now {
        return Err(RollbackRefused::Expired(terms.expires.clone()));
    }
    let threshold = root
        .roles
        .get(&RoleType::Root)
        .map_or(u64::MAX, |role| role.threshold.get());
    let valid = valid_root_signers(root, statement);
    if u64::try_from(valid).unwrap_or(0) < threshold {
        return Err(RollbackRefused::NotSignedByRoot { valid, threshold });
    }
    Ok(())
}

/// How many distinct root-role keys signed the statement's terms validly.
fn valid_root_signers(root: &Root, statement: &RollbackStatement) -> usize {
    let Ok(message) = statement.signed.canonical_bytes() else {
        return 0;
    };
    let Some(role) = root.roles.get(&RoleType::Root) else {
        return 0;
    };
    let signers: HashSet<&str> = statement
        .signatures
        .iter()
        .filter(|signature| {
            let listed = role
                .keyids
                .iter()
                .find(|id| hex::encode(id.as_ref()) == signature.keyid);
            let key = listed.and_then(|id| root.keys.get(id));
            let sig = hex::decode(&signature.sig).unwrap_or_default();
            key.is_some_and(|key| ed25519_verifies(key, &message, &sig))
        })
        .map(|signature| signature.keyid.as_str())
        .collect();
    signers.len()
}

fn ed25519_verifies(key: &Key, message: &[u8], signature: &[u8]) -> bool {
    let Key::Ed25519 { keyval, .. } = key else {
        return false;
    };
    let public = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ED25519,
        keyval.public.as_ref(),
    );
    public.verify(message, signature).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::num::NonZeroU64;

    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use cms_protocol::{RollbackSignature, RollbackTerms};
    use tough::schema::RoleKeys;
    use tough::schema::decoded::{Decoded, Hex};
    use tough::schema::key::{Ed25519Key, Ed25519Scheme};

    use super::*;

    fn key_pair() -> Ed25519KeyPair {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn tuf_key(pair: &Ed25519KeyPair) -> Key {
        let public: Decoded<Hex> = serde_json::from_value(serde_json::Value::String(hex::encode(
            pair.public_key().as_ref(),
        )))
        .unwrap();
        Key::Ed25519 {
            keyval: Ed25519Key {
                public,
                _extra: HashMap::new(),
            },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        }
    }

    /// A root whose root role is `root_key` and whose targets role is `online_key`.
    fn root(root_key: &Ed25519KeyPair, online_key: &Ed25519KeyPair) -> Root {
        let mut keys = HashMap::new();
        let mut roles = HashMap::new();
        for (role, pair) in [(RoleType::Root, root_key), (RoleType::Targets, online_key)] {
            let key = tuf_key(pair);
            let id = key.key_id().unwrap();
            keys.insert(id.clone(), key);
            let role_keys = RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            };
            roles.insert(role, role_keys);
        }
        Root {
            spec_version: "1.0.0".into(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: "2100-01-01T00:00:00Z".parse().unwrap(),
            keys,
            roles,
            _extra: HashMap::new(),
        }
    }

    fn statement(signer: &Ed25519KeyPair, version: &str, expires: &str) -> RollbackStatement {
        let signed = RollbackTerms {
            kind: ROLLBACK_TYPE.into(),
            version: version.into(),
            platform: "linux-x86_64".into(),
            expires: expires.into(),
        };
        let sig = signer.sign(&signed.canonical_bytes().unwrap());
        let keyid = tuf_key(signer).key_id().unwrap();
        RollbackStatement {
            signed,
            signatures: vec![RollbackSignature {
                keyid: hex::encode(keyid.as_ref()),
                sig: hex::encode(sig.as_ref()),
            }],
        }
    }

    fn offer(version: &str) -> UpdateInfo {
        UpdateInfo {
            version: version.into(),
            platform: "linux-x86_64".into(),
            package_url: String::new(),
            target: String::new(),
            length: 1,
            sha256: String::new(),
            window: None,
            urgent: false,
            rollback: None,
        }
    }

    const LATER: &str = "2100-01-01T00:00:00Z";

    #[test]
    fn only_the_root_key_allows_going_back() {
        let (root_key, online_key) = (key_pair(), key_pair());
        let trusted = root(&root_key, &online_key);
        let now = OffsetDateTime::now_utc();
        let good = statement(&root_key, "1.0.0", LATER);
        assert_eq!(check(&trusted, &good, &offer("1.0.0"), now), Ok(()));

        let by_online_key = statement(&online_key, "1.0.0", LATER);
        assert_eq!(
            check(&trusted, &by_online_key, &offer("1.0.0"), now),
            Err(RollbackRefused::NotSignedByRoot {
                valid: 0,
                threshold: 1
            })
        );
        let mut altered = good.clone();
        altered.signed.expires = "2101-01-01T00:00:00Z".into();
        assert!(matches!(
            check(&trusted, &altered, &offer("1.0.0"), now),
            Err(RollbackRefused::NotSignedByRoot { valid: 0, .. })
        ));
        let mut twice = good.clone();
        twice.signatures.push(twice.signatures[0].clone());
        assert_eq!(check(&trusted, &twice, &offer("1.0.0"), now), Ok(()));
    }

    #[test]
    fn a_statement_for_another_release_or_expired_is_refused() {
        let (root_key, online_key) = (key_pair(), key_pair());
        let trusted = root(&root_key, &online_key);
        let now = OffsetDateTime::now_utc();
        let good = statement(&root_key, "1.0.0", LATER);
        assert!(matches!(
            check(&trusted, &good, &offer("0.9.0"), now),
            Err(RollbackRefused::OtherRelease { .. })
        ));
        let old = statement(&root_key, "1.0.0", "2020-01-01T00:00:00Z");
        assert!(matches!(
            check(&trusted, &old, &offer("1.0.0"), now),
            Err(RollbackRefused::Expired(_))
        ));
    }
}
