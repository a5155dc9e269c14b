//! The machine's policy for the agent (Group Policy: `HKLM\SOFTWARE\Policies\CMSAgent`, read
//! by `system::read_policy`), judged value by value against one table of rules ([`RULES`]).
//!
//! A value that passes its rule wins over config.json and the command line; one that does not
//! (or a name no rule knows, or a registry type that is not a string or DWORD) is reported and
//! ignored, never fatal: a bad policy must not take an agent off its backend. This module only
//! judges: reading the registry, applying the settings and watching for changes are the
//! caller's.
//!
//! Must never: fail on a value, or show a proxy password ([`Setting::shown`]).

use std::path::PathBuf;

use crate::core::metered::{BadMeteredMode, MeteredMode};
use crate::net::proxy::ProxySetting;
use crate::net::servers::ServerList;
use crate::net::tls::parse_ca_pem;

/// One setting the policy gives, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `ServerUrl`: the backend (as `--server`).
    Server(String),
    /// `Proxy`: `http://[user:password@]host:port` or `none` (as `--proxy`).
    Proxy(ProxySetting),
    /// `CaCertFile`: a PEM file of CA certificates, read (as `--ca-cert`).
    CaCert {
        /// The file named by the policy.
        file: PathBuf,
        /// Its certificates.
        pem: String,
    },
    /// `Group`: the agent's group (as `--group`).
    Group(String),
    /// `DownloadLimit`: KiB/s for package downloads, 0 for none (as `--download-limit`).
    DownloadLimit(u32),
    /// `Metered`: `auto`, `yes` or `no` (as `--metered`).
    Metered(MeteredMode),
}

impl Setting {
    /// The value for logs and `--status`: the proxy without its credentials.
    pub fn shown(&self) -> String {
        match self {
            Setting::Server(url) | Setting::Group(url) => url.clone(),
            Setting::Proxy(ProxySetting::Direct) => "none".to_owned(),
            Setting::Proxy(ProxySetting::Explicit(url)) => url.to_string(),
            Setting::CaCert { file, .. } => file.display().to_string(),
            Setting::DownloadLimit(0) => "none".to_owned(),
            Setting::DownloadLimit(kbps) => format!("{kbps} KiB/s"),
            Setting::Metered(mode) => mode.name().to_owned(),
        }
    }
}

/// One rule: the value's name (as Group Policy writes it) and how it becomes a [`Setting`].
struct Rule {
    name: &'static str,
    check: fn(&str) -> Result<Setting, String>,
}

/// Every value the agent takes from policy (ADMX: `build_scripts/policy/`).
const RULES: [Rule; 6] = [
    Rule {
        name: "ServerUrl",
        check: server,
    },
    Rule {
        name: "Proxy",
        check: proxy,
    },
    Rule {
        name: "CaCertFile",
        check: ca_cert,
    },
    Rule {
        name: "Group",
        check: group,
    },
    Rule {
        name: "DownloadLimit",
        check: download_limit,
    },
    Rule {
        name: "Metered",
        check: metered,
    },
];

fn server(raw: &str) -> Result<Setting, String> {
    let url = raw.trim().to_owned();
    ServerList::parse(std::slice::from_ref(&url)).map_err(|e| e.to_string())?;
    Ok(Setting::Server(url))
}

fn proxy(raw: &str) -> Result<Setting, String> {
    ProxySetting::parse(raw)
        .map(Setting::Proxy)
        .map_err(|e| e.to_string())
}

fn ca_cert(raw: &str) -> Result<Setting, String> {
    let file = PathBuf::from(raw.trim());
    let pem = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse_ca_pem(&pem).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Setting::CaCert { file, pem })
}

fn group(raw: &str) -> Result<Setting, String> {
    let name = raw.trim();
    match cms_protocol::is_valid_group(name) {
        true => Ok(Setting::Group(name.to_owned())),
        false => Err("a group name is 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'".to_owned()),
    }
}

fn download_limit(raw: &str) -> Result<Setting, String> {
    raw.trim()
        .parse()
        .map(Setting::DownloadLimit)
        .map_err(|_| format!("{raw:?} is not a number of KiB/s (0 for no limit)"))
}

fn metered(raw: &str) -> Result<Setting, String> {
    raw.parse()
        .map(Setting::Metered)
        .map_err(|e: BadMeteredMode| e.to_string())
}

/// A value that was ignored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The value's name as found.
    pub name: String,
    /// Why it was ignored.
    pub reason: String,
}

/// The policy as judged: what applies and what was ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The settings that apply, each with the value's name, in registry order.
    pub settings: Vec<(&'static str, Setting)>,
    /// The values ignored.
    pub rejected: Vec<Rejected>,
}

impl Policy {
    /// Judges `values` (name, text; `None` for a registry type that is neither a string nor a
    /// DWORD) against [`RULES`]; names match case-insensitively, as registry names do.
    pub fn judge(values: &[(String, Option<String>)]) -> Self {
        let mut policy = Policy::default();
        for (name, text) in values {
            let rule = RULES.iter().find(|r| r.name.eq_ignore_ascii_case(name));
            let outcome = match (rule, text) {
                (None, _) => Err("no such policy value".to_owned()),
                (Some(_), None) => Err("not a string value".to_owned()),
                (Some(rule), Some(text)) => (rule.check)(text).map(|s| (rule.name, s)),
            };
            match outcome {
                Ok(setting) => policy.settings.push(setting),
                Err(reason) => policy.rejected.push(Rejected {
                    name: name.clone(),
                    reason,
                }),
            }
        }
        policy
    }

    /// Whether the policy gives nothing and ignores nothing.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty() && self.rejected.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn good_values_apply_and_bad_ones_are_ignored_with_a_reason() {
        let policy = Policy::judge(&values(&[
            ("ServerUrl", Some("https://cms.example.com")),
            ("group", Some("lab-3")),
            ("Proxy", Some("http://user:secret@proxy.example:3128")),
            ("DownloadLimit", Some("100")),
            ("Metered", Some("yes")),
            ("CaCertFile", Some("/no/such/ca.pem")),
            ("Group", None),
            ("DownloadLimit", Some("fast")),
            ("Metered", Some("sometimes")),
            ("Colour", Some("blue")),
        ]));
        let names: Vec<&str> = policy.settings.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["ServerUrl", "Group", "Proxy", "DownloadLimit", "Metered"]
        );
        assert_eq!(policy.settings[3].1, Setting::DownloadLimit(100));
        assert_eq!(policy.settings[3].1.shown(), "100 KiB/s");
        assert_eq!(policy.settings[4].1, Setting::Metered(MeteredMode::Yes));
        assert_eq!(policy.settings[4].1.shown(), "yes");
        assert_eq!(
            policy.settings[0].1,
            Setting::Server("https://cms.example.com".into())
        );
        let shown = policy.settings[2].1.shown();
        assert!(!shown.contains("secret"), "{shown}");
        let rejected: Vec<&str> = policy.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            rejected,
            ["CaCertFile", "Group", "DownloadLimit", "Metered", "Colour"]
        );
        assert!(policy.rejected[0].reason.contains("cannot read"));
    }

    #[test]
    fn a_bad_server_url_or_group_is_rejected() {
        let policy = Policy::judge(&values(&[
            ("ServerUrl", Some("ftp://nowhere")),
            ("ServerUrl", Some("http://cms.example.com")),
            ("Group", Some("no spaces allowed")),
        ]));
        assert!(policy.settings.is_empty(), "{policy:?}");
        assert_eq!(policy.rejected.len(), 3);
        assert!(Policy::judge(&[]).is_empty());
    }
}
