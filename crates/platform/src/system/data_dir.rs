//! The data folder of an elevated agent (docs/CONTRACT.md, "Files on disk"): what
//! [`super::secure_data_dir`] reports, and the one rule it applies to every entry of the tree,
//! on both systems.
//!
//! A standard user may create the folder (or a link where it, `logs/` or `updates/` goes)
//! before the agent is installed; as its owner they could always rewrite its permissions, and
//! a link makes the elevated agent write wherever it points. So an entry is kept only when an
//! administrator (SYSTEM/Administrators, root) owns it and it is not a link; a link is removed,
//! never followed, and anything else is taken over (owner reset, access for the owner only).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What an entry of the data folder's tree is, as seen without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    /// A real folder.
    Folder,
    /// A regular file with this many names (hard links); 1 is the normal case.
    File {
        /// `st_nlink` (Linux); Windows passes 1.
        names: u64,
    },
    /// A symbolic link, a junction or any other reparse point.
    Link,
    /// A socket, FIFO or device (Linux): the agent's own `agent.sock` is one.
    #[cfg_attr(
        all(windows, not(test)),
        expect(dead_code, reason = "Windows lists folders, files and links")
    )]
    Special,
}

/// What to do with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// An administrator's own entry: used as it is.
    Keep,
    /// Removed without following it: a link, a second name of a file, or someone else's
    /// special file (a FIFO where `config.json` goes would hang the agent).
    Remove(&'static str),
    /// Someone else's folder or file: its owner is reset and access limited to the owner.
    TakeOver,
}

/// The rule of the module docs for one entry, whoever (`admin_owned`) owns it.
pub(super) fn verdict(kind: EntryKind, admin_owned: bool) -> Verdict {
    match kind {
        EntryKind::Link => Verdict::Remove("a link"),
        EntryKind::File { names } if names > 1 => Verdict::Remove("a hard link"),
        EntryKind::Special if !admin_owned => Verdict::Remove("someone else's special file"),
        EntryKind::Folder | EntryKind::File { .. } if !admin_owned => Verdict::TakeOver,
        EntryKind::Folder | EntryKind::File { .. } | EntryKind::Special => Verdict::Keep,
    }
}

/// What [`super::secure_data_dir`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataDirReport {
    /// The folder did not exist: it was created with its protection in the creating call.
    pub created: bool,
    /// What was changed in a folder someone else made or linked, in order; empty when the
    /// folder was the agent's own.
    pub changes: Vec<DataDirChange>,
}

impl DataDirReport {
    /// Whether anything of someone else's was found (and removed or taken over).
    pub fn taken_over(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// One change made to the data folder's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirChange {
    /// The entry was removed without following it.
    Removed {
        /// The entry.
        path: PathBuf,
        /// What it was (`a link`, `a hard link`, ...).
        what: &'static str,
    },
    /// The entry belonged to someone else: it is now the administrators' (root's) and private.
    TakenOver {
        /// The entry.
        path: PathBuf,
        /// Who owned it: `uid N` on Linux, a SID on Windows.
        previous_owner: String,
    },
}

impl fmt::Display for DataDirChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirChange::Removed { path, what } => {
                write!(f, "removed {} ({what}, not followed)", path.display())
            }
            DataDirChange::TakenOver {
                path,
                previous_owner,
            } => write!(
                f,
                "took over {} (owned by {previous_owner})",
                path.display()
            ),
        }
    }
}

/// LocalSystem's SID.
#[cfg(any(windows, test))]
const SYSTEM_SID: &str = "S-1-5-18";
/// `BUILTIN\Administrators`' SID.
#[cfg(any(windows, test))]
const ADMINISTRATORS_SID: &str = "S-1-5-32-544";

/// Whether a Windows owner `sid` is an administrator's: SYSTEM, Administrators, or `own`, the
/// user of this elevated process (under Wine, the owner of everything it makes).
#[cfg(any(windows, test))]
pub(super) fn is_admin_owner(sid: &str, own: Option<&str>) -> bool {
    sid.eq_ignore_ascii_case(SYSTEM_SID)
        || sid.eq_ignore_ascii_case(ADMINISTRATORS_SID)
        || own.is_some_and(|own| own.eq_ignore_ascii_case(sid))
}

/// The error of an entry that could not be removed or taken over: it names the entry and its
/// owner, for the message the agent exits with.
pub(super) fn refused(path: &Path, owner: &str, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!(
            "{} (owned by {owner}) cannot be taken over: {err}",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_removed_whoever_owns_them() {
        for admin_owned in [true, false] {
            assert_eq!(
                verdict(EntryKind::Link, admin_owned),
                Verdict::Remove("a link")
            );
            assert_eq!(
                verdict(EntryKind::File { names: 2 }, admin_owned),
                Verdict::Remove("a hard link")
            );
        }
    }

    #[test]
    fn someone_elses_entries_are_taken_over_or_removed() {
        assert_eq!(verdict(EntryKind::Folder, false), Verdict::TakeOver);
        assert_eq!(
            verdict(EntryKind::File { names: 1 }, false),
            Verdict::TakeOver
        );
        assert!(matches!(
            verdict(EntryKind::Special, false),
            Verdict::Remove(_)
        ));
    }

    #[test]
    fn an_administrators_own_entries_are_kept() {
        for kind in [
            EntryKind::Folder,
            EntryKind::File { names: 1 },
            EntryKind::Special,
        ] {
            assert_eq!(verdict(kind, true), Verdict::Keep, "{kind:?}");
        }
    }

    #[test]
    fn windows_owners_of_an_administrator_are_system_administrators_and_itself() {
        let own = Some("S-1-5-21-1-2-3-500");
        assert!(is_admin_owner("S-1-5-18", own));
        assert!(is_admin_owner("S-1-5-32-544", None));
        assert!(is_admin_owner("S-1-5-21-1-2-3-500", own));
        assert!(!is_admin_owner("S-1-5-21-1-2-3-1001", own));
        assert!(!is_admin_owner("S-1-5-32-545", own), "Users");
    }

    #[test]
    fn a_change_names_the_entry_and_the_previous_owner() {
        let change = DataDirChange::TakenOver {
            path: PathBuf::from("/var/lib/cms-agent"),
            previous_owner: "uid 65534".into(),
        };
        assert_eq!(
            change.to_string(),
            "took over /var/lib/cms-agent (owned by uid 65534)"
        );
        let report = DataDirReport {
            created: false,
            changes: vec![change],
        };
        assert!(report.taken_over());
        assert!(!DataDirReport::default().taken_over());
    }
}
