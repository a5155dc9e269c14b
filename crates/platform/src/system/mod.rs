//! What the agent and the updater need from the operating system, behind one API.
//!
//! Each function here is implemented twice with the same signature: `windows.rs` (Win32) and
//! `unix.rs` (Linux). Outside this crate only the agent's `ipc/` may say `cfg(windows)`; callers
//! use these functions and stay platform-blind. This module must never hold agent policy
//! (when to lock, what to do when a lock is held): it only answers questions and performs
//! single OS operations.

pub mod service;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
use windows as imp;

/// Owned SDDL security descriptors, for the IPC pipe's DACL.
#[cfg(windows)]
pub use windows::SecurityDescriptor;

/// Whether this process runs under Wine (some Windows rules are not enforced there).
#[cfg(windows)]
pub use windows::running_under_wine;

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Release platform name of this build (`windows-x86_64`, `linux-x86_64`): selects packages.
pub const PLATFORM: &str = imp::PLATFORM;

/// Where the machine's policy for the agent is kept, for messages (Windows:
/// `HKLM\SOFTWARE\Policies\CMSAgent`, written by Group Policy).
pub const POLICY_PLACE: &str = imp::POLICY_PLACE;

/// The values of the machine's policy for the agent, by name, in registry order: strings as
/// they are, DWORDs in decimal, any other type as `None` (for the agent to report). Empty when
/// there is no policy, and always on Unix, which has none. Judging the values is the agent's.
pub fn read_policy() -> io::Result<Vec<(String, Option<String>)>> {
    imp::read_policy()
}

/// Blocks until something under the machine's policy keys changes (Windows:
/// `RegNotifyChangeKeyValue` on `HKLM\SOFTWARE\Policies` and its subtree, created if missing),
/// then `Ok(true)`; `Ok(false)` at once where there is no policy to watch (Unix).
pub fn wait_policy_change() -> io::Result<bool> {
    imp::wait_policy_change()
}

/// Whether the process runs elevated (Windows) or as root (Unix): selects the storage path.
pub fn is_running_as_admin() -> bool {
    imp::is_running_as_admin()
}

/// The storage path of docs/CONTRACT.md ("Files on disk") of the machine-wide agent or the
/// user's when no override is given, or `None` when the system does not say where it should be
/// (no ProgramData/LocalAppData known folder or variable, no `$HOME`).
pub fn default_data_dir(machine_wide: bool) -> Option<PathBuf> {
    imp::default_data_dir(machine_wide)
}

/// Makes the storage folder readable by its owner (and, on Windows, SYSTEM and Administrators)
/// only, because it holds the agent's credential and IPC secret. Windows: a protected DACL
/// (inheritance off) for the machine-wide folder; the per-user folder is private already (and
/// must stay reachable by the user's non-elevated processes). Linux: 0700.
pub fn set_directory_acls(path: &Path, machine_wide: bool) -> io::Result<()> {
    imp::set_directory_acls(path, machine_wide)
}

/// Makes `println!`/`eprintln!` reach the console this program was started from. The Windows
/// exes are GUI-subsystem programs (no console window of their own, at logon or as a service),
/// so Windows gives them no console: when the standard handles are not redirected, this
/// attaches to the parent's console. Nothing to do on Linux.
pub fn attach_parent_console() {
    imp::attach_parent_console();
}

/// Tries to take the OS lock that makes this process the one agent; `Ok(false)` when another
/// process holds it. The lock never covers the bytes other processes read.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    imp::try_lock_exclusive(file)
}

/// Whether `file` is still the file that `path` names, so a lock taken on a file that was just
/// deleted by its previous owner is not mistaken for the lock.
pub fn is_same_file(file: &File, path: &Path) -> io::Result<bool> {
    imp::is_same_file(file, path)
}

/// An opaque, stable number for when process `pid` started, or `None` if it does not run.
/// Together with the PID it names one process, even after the PID is reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    imp::process_start_time(pid)
}

/// Completes when the OS asks the agent to stop (SIGTERM/SIGINT; console control events on
/// Windows). The caller turns that into one graceful shutdown. Needs the `signals` feature
/// (tokio), which the updater does not take.
#[cfg(feature = "signals")]
pub async fn shutdown_signal() -> io::Result<()> {
    imp::shutdown_signal().await
}

/// Whether process `pid` runs now (the updater waits on the old agent with it).
pub fn process_alive(pid: u32) -> bool {
    process_start_time(pid).is_some()
}

/// Ends process `pid` at once: for an agent that will not stop when asked during an update.
pub fn terminate_process(pid: u32) -> io::Result<()> {
    imp::terminate_process(pid)
}

/// Makes `command` start outside the caller's process group and console, so it outlives the
/// caller and is not stopped with it (the agent launching the updater, the updater the agent).
pub fn detach(command: &mut std::process::Command) {
    imp::detach(command);
}

/// Marks an extracted executable as runnable (the execute bits on Unix; nothing on Windows).
pub fn make_executable(path: &Path) -> io::Result<()> {
    imp::make_executable(path)
}

/// Bytes this process may still write on the volume that holds `path`.
pub fn available_space(path: &Path) -> io::Result<u64> {
    fs4::available_space(path)
}

/// The install path of an executable that may have been replaced on disk while it runs: on
/// Linux, once a package manager renamed a new file over the running one, the running exe's
/// path reads `.../cms_agent (deleted)`; the install path is the same path without that
/// suffix. Windows keeps the running exe's path, so it is returned unchanged.
pub fn installed_path(exe: &Path) -> PathBuf {
    imp::installed_path(exe)
}

/// This program's install path: `current_exe()` through [`installed_path`].
pub fn installed_exe() -> io::Result<PathBuf> {
    Ok(installed_path(&std::env::current_exe()?))
}

/// Name of the autostart entry: the `Run` value on Windows, the unit/desktop file stem on Linux.
pub const AUTOSTART_NAME: &str = "CMSAgent";

/// Why an OS operation the operator asked for failed; every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The OS refused for lack of rights.
    #[error("permission denied: {what}; {hint}")]
    PermissionDenied {
        /// What was attempted, with the place (registry key, file).
        what: String,
        /// What the operator can do about it.
        hint: &'static str,
    },
    /// The thing to read does not exist (or the OS cannot find a prerequisite).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// Anything else the OS said.
    #[error("{what}: {source}")]
    Os {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// `--service` in a process the service manager did not start; the text says how to start it.
    #[error("not started by the service manager: {0}")]
    NotAService(String),
    /// The exe to run with full rights sits where a standard user could change it.
    #[error(
        "refusing to register {path} to start with full rights: {why}; install it where only administrators can write (Program Files on Windows, /usr/local/bin or /opt on Linux) and run --enable-autostart from there"
    )]
    UnsafeLocation {
        /// The exe.
        path: PathBuf,
        /// Who could write what.
        why: String,
    },
    /// Stored data exists but is not usable.
    #[error("{what} is unusable: {reason}; delete it and start the agent again")]
    Invalid {
        /// What was read.
        what: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl SystemError {
    /// Classifies an I/O error so permission and not-found problems get their own message.
    fn from_io(what: impl Into<String>, err: io::Error, hint: &'static str) -> Self {
        let what = what.into();
        match err.kind() {
            io::ErrorKind::PermissionDenied => SystemError::PermissionDenied { what, hint },
            io::ErrorKind::NotFound => SystemError::NotFound { what },
            _ => SystemError::Os { what, source: err },
        }
    }
}

/// Writes the entry that starts `exe_path args...` at boot (machine-wide) or at logon (user),
/// replacing an older one; returns where it was written, for the operator. Machine-wide:
/// the Windows service `CMSAgent` (LocalSystem, automatic start, recovery actions; a `Run`
/// value left in HKLM by an older version is removed) or root's systemd unit. Per user: the
/// HKCU `Run` value or the XDG autostart entry.
///
/// The machine-wide entry runs the exe with full rights at every boot, so it is refused for an
/// exe that a standard user could replace or plant a file beside ([`SystemError::UnsafeLocation`]):
/// the exe and its folder must be writable by SYSTEM, Administrators and TrustedInstaller only
/// (Windows), or be root's and writable by nobody else, up to `/` (Linux).
pub fn register_autostart(
    exe_path: &Path,
    args: &[OsString],
    machine_wide: bool,
) -> Result<String, SystemError> {
    if machine_wide && let Some(why) = imp::writable_by_standard_users(exe_path)? {
        return Err(SystemError::UnsafeLocation {
            path: exe_path.to_path_buf(),
            why,
        });
    }
    imp::register_autostart(exe_path, args, machine_wide)
}

/// Removes the autostart entry (the Windows service is deleted once it has stopped: stop it
/// first with [`service::stop`]); `Ok(None)` when there was none (not an error), else where
/// it was.
pub fn unregister_autostart(machine_wide: bool) -> Result<Option<String>, SystemError> {
    imp::unregister_autostart(machine_wide)
}

/// What [`manage_ipc_secret`] should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAction {
    /// Read the stored secret; `None` when there is none.
    Get,
    /// Generate a new secret, store it (replacing any old one) and return it.
    Create,
    /// Remove the stored secret (uninstall); returns `None`, also when there was none.
    Delete,
}

/// Whose secret: the machine-wide agent's (elevated/root) or the current user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretScope {
    /// The per-user agent.
    User,
    /// The machine-wide agent.
    System,
}

impl SecretScope {
    /// The scope that matches the process's rights.
    pub fn current(is_admin: bool) -> Self {
        if is_admin {
            SecretScope::System
        } else {
            SecretScope::User
        }
    }

    /// `user` or `system`, for names and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretScope::User => "user",
            SecretScope::System => "system",
        }
    }
}

/// The shared secret that authenticates IPC clients: 32 random bytes as 64 hex digits.
/// Never logged: `Debug` is redacted and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct IpcSecret(String);

impl IpcSecret {
    /// Length of the hex form.
    const HEX_LEN: usize = 64;

    /// A fresh secret from the OS random source.
    pub fn generate() -> Result<Self, SystemError> {
        let mut bytes = [0u8; Self::HEX_LEN / 2];
        getrandom::fill(&mut bytes).map_err(|e| SystemError::Os {
            what: "generating the IPC secret".into(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(IpcSecret(hex::encode(bytes)))
    }

    /// Parses a stored secret; `None` unless it is exactly 64 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() == Self::HEX_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| IpcSecret(text.to_ascii_lowercase()))
    }

    /// The hex form, to send in a request or store.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IpcSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IpcSecret(<redacted>)")
    }
}

/// Reads, creates or removes the IPC secret (the plan's `manage_ipc_secret`). Windows, per
/// user: the generic credential `CMSAgent/ipc/user` in the user's Credential Manager. Windows,
/// machine-wide: `ipc.secret` in `storage_path` (the protected data folder: SYSTEM and
/// Administrators only), encrypted with DPAPI's machine key, so an elevated administrator's
/// `--status`/`--stop`/`--force` can read what the service (LocalSystem) wrote, and a copy of
/// the file taken off the machine is useless. Linux: `ipc.secret` (0600) in `storage_path`.
pub fn manage_ipc_secret(
    action: SecretAction,
    scope: SecretScope,
    storage_path: &Path,
) -> Result<Option<IpcSecret>, SystemError> {
    match action {
        SecretAction::Get => imp::read_ipc_secret(scope, storage_path),
        SecretAction::Create => {
            let secret = IpcSecret::generate()?;
            imp::write_ipc_secret(scope, storage_path, &secret)?;
            Ok(Some(secret))
        }
        SecretAction::Delete => {
            imp::delete_ipc_secret(scope, storage_path)?;
            Ok(None)
        }
    }
}

/// Whether [`seal_at_rest`] encrypts (Windows: DPAPI); elsewhere it returns the bytes as given
/// and a secret at rest is protected by its folder's permissions alone (0700).
pub const SEALS_AT_REST: bool = imp::SEALS_AT_REST;

/// Seals a secret the agent keeps on disk (its credential, its enrollment token) so that a
/// copy of the file is useless off this machine. Windows: DPAPI with the machine key for
/// [`SecretScope::System`] (the service and elevated administrators can open it, as the
/// machine-wide folder's DACL allows), or the current user's key for [`SecretScope::User`]
/// (only that user can); the blob is tied to this one purpose. Linux: `plain` unchanged
/// ([`SEALS_AT_REST`] is false). The result is binary; never log either side.
pub fn seal_at_rest(scope: SecretScope, plain: &[u8]) -> Result<Vec<u8>, SystemError> {
    imp::seal_at_rest(scope, plain)
}

/// Opens what [`seal_at_rest`] sealed (the blob says which key; on Windows a blob sealed on
/// another machine, or by another user in user scope, is refused as
/// [`SystemError::Invalid`]). Linux: `sealed` unchanged.
pub fn unseal_at_rest(sealed: &[u8]) -> Result<Vec<u8>, SystemError> {
    imp::unseal_at_rest(sealed)
}

/// The current user's SID (`S-1-5-21-...`) on Windows, the effective UID on Linux: names the
/// per-user IPC endpoint.
pub fn get_user_sid_string() -> Result<String, SystemError> {
    imp::get_user_sid_string()
}

/// The account a running process acts as: who may serve an IPC endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The user's SID on Windows, the effective UID on Linux (as [`get_user_sid_string`]).
    pub account: String,
    /// Whether it runs with full rights: an elevated token (SYSTEM, or an administrator
    /// after UAC) on Windows, UID 0 on Linux. A standard user's process never is.
    pub privileged: bool,
}

/// The account process `pid` runs as, for checking who serves an IPC endpoint before
/// anything is sent to it.
pub fn process_identity(pid: u32) -> Result<ProcessIdentity, SystemError> {
    imp::process_identity(pid)
}

/// The proxy the machine (or the user) is set up to use, as the OS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemProxy {
    /// `host:port` or `http://host:port` (possibly with `user:password@`).
    pub proxy: String,
    /// Hosts to reach directly: `,` or `;` separated, `*.corp`, `.corp`, `<local>`, `*`.
    pub bypass: String,
    /// Where the setting came from, for the operator (`WinHTTP`, `HTTPS_PROXY`, ...).
    pub source: &'static str,
}

/// The system's proxy for traffic to an `https` (or plain `http`) server, if one is set.
/// Windows: the machine's WinHTTP proxy (`netsh winhttp set proxy`, which is what a service
/// sees), then the user's Internet settings. Linux: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`
/// (upper or lower case) and `NO_PROXY`.
pub fn system_proxy(https: bool) -> Option<SystemProxy> {
    imp::system_proxy(https)
}

/// The entry for `https` (or `http`) of a Windows proxy list: `host:port` alone applies to
/// every scheme; `http=h1:p1;https=h2:p2` names one per scheme.
#[cfg(any(windows, test))]
fn proxy_for_scheme(list: &str, https: bool) -> Option<String> {
    let wanted = if https { "https" } else { "http" };
    let entries = list
        .split([';', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let mut fallback = None;
    for entry in entries {
        match entry.split_once('=') {
            Some((scheme, proxy)) if scheme.eq_ignore_ascii_case(wanted) => {
                return Some(proxy.to_owned());
            }
            Some(_) => {}
            None => fallback = fallback.or_else(|| Some(entry.to_owned())),
        }
    }
    fallback
}

mod data_dir;
pub use data_dir::{DataDirChange, DataDirReport};

/// Makes `path` the data folder of an elevated agent (root on Linux) and nobody else's: a
/// folder that does not exist is created with its protection in the creating call (0700; on
/// Windows the protected DACL of [`set_directory_acls`] for the machine-wide folder); one that
/// exists is walked without following anything: a link, junction or reparse point (and on
/// Linux a second hard link or someone else's socket/FIFO) anywhere in the tree is removed,
/// and every folder or file an administrator (SYSTEM, Administrators, root) does not own is
/// taken over (owner reset; 0700/0600 or the protected DACL). The report says what was done,
/// for a warning naming the folder and its previous owner; an error (the folder cannot be
/// created, or something cannot be taken over) says which entry and whose it is. The parent
/// folders are created as needed and trusted: choose a data folder inside one only
/// administrators can change.
pub fn secure_data_dir(path: &Path, machine_wide: bool) -> io::Result<DataDirReport> {
    imp::secure_data_dir(path, machine_wide)
}

// --- No SYSTEM code from a writable place; the package pinned while it is checked (issue 22) ---

/// Restricts the DLLs this process loads at run time (`LoadLibrary` by our code or by a
/// system DLL) to System32: the exe's folder, the current directory and `PATH` are no longer
/// searched. Call it first thing in `main`. Our exes are statically linked and ship no DLL,
/// so their own folder is not needed. It cannot govern the DLLs the exe imports statically:
/// the loader resolves those before `main` runs, searching the exe's own folder first, which
/// is why every folder an exe runs from must be writable by administrators only. Nothing to
/// do on Linux (the dynamic loader searches no writable folder of ours).
pub fn restrict_dll_search() -> io::Result<()> {
    imp::restrict_dll_search()
}

/// Opens the regular file `path` for reading so that its bytes cannot change while the file
/// is open: on Windows no one may open it for writing, rename or delete it meanwhile (share
/// mode read only; an existing writer makes this fail); a symbolic link or junction in its
/// last component is refused on both systems (Linux: `O_NOFOLLOW`). On Linux root (the
/// storage folder's only writer) could still write to it.
pub fn open_exclusive_read(path: &Path) -> io::Result<File> {
    let file = imp::open_exclusive_read(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// A path that names `file`, opened from `path` by [`open_exclusive_read`], for as long as it
/// stays open, for readers that open by path: on Linux `/proc/self/fd/N` (the open file
/// itself, whatever is renamed over `path` meanwhile; `path` when `/proc` is not mounted), on
/// Windows `path` (nothing can be moved over it while the file is open).
pub fn pinned_path(file: &File, path: &Path) -> PathBuf {
    imp::pinned_path(file, path)
}

/// Deletes this program's own executable while it runs, where the OS allows that without
/// help: Linux unlinks it (`Ok(true)`). Windows cannot delete a running exe, and this does
/// nothing (`Ok(false)`): no copy in a temp folder and no helper process (both would run
/// code from a folder standard users can write); whoever starts next removes the file.
pub fn delete_running_exe() -> io::Result<bool> {
    imp::delete_running_exe()
}

#[cfg(test)]
mod proxy_list_tests {
    use super::proxy_for_scheme;

    #[test]
    fn a_windows_proxy_list_gives_the_entry_of_the_scheme() {
        assert_eq!(
            proxy_for_scheme("proxy:3128", true).as_deref(),
            Some("proxy:3128")
        );
        let per_scheme = "http=p1:80;https=p2:443";
        assert_eq!(
            proxy_for_scheme(per_scheme, true).as_deref(),
            Some("p2:443")
        );
        assert_eq!(
            proxy_for_scheme(per_scheme, false).as_deref(),
            Some("p1:80")
        );
        assert_eq!(proxy_for_scheme("ftp=p3:21", true), None);
        assert_eq!(proxy_for_scheme("", true), None);
    }
}
