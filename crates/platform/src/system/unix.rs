//! Linux implementation of the `system` API: POSIX permissions, `flock`, `/proc`, signals,
//! systemd/XDG autostart entries and the IPC secret file.

use std::ffi::{CStr, CString, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use super::data_dir::{EntryKind, Verdict, refused, verdict};
use super::service::SERVICE_NAME;
use super::{AUTOSTART_NAME, DataDirChange, DataDirReport, IpcSecret, SecretScope, SystemError};

/// File holding the IPC secret inside the storage path.
const SECRET_FILE_NAME: &str = "ipc.secret";
/// Where root's systemd unit goes.
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";
/// The target that pulls the unit in at boot.
const WANTED_BY: &str = "multi-user.target";
/// Advice when the OS refuses to change an autostart entry.
const AUTOSTART_HINT: &str =
    "run as root for the machine-wide systemd unit, or as the user for the user's autostart entry";

pub const PLATFORM: &str = "linux-x86_64";

pub fn is_running_as_admin() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn default_data_dir(machine_wide: bool) -> Option<PathBuf> {
    if machine_wide {
        return Some(PathBuf::from("/var/lib/cms-agent"));
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/share")))?;
    Some(data_home.join("cms-agent"))
}

pub fn set_directory_acls(path: &Path, _machine_wide: bool) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

pub fn is_same_file(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(open.dev() == named.dev() && open.ino() == named.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of `/proc/PID/stat` (clock ticks since boot); the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
/// A zombie (exited, not yet reaped by its parent) or dead process does not run: `None`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(feature = "signals")]
pub async fn shutdown_signal() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested by the OS"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested by the OS"),
    }
    Ok(())
}

pub fn terminate_process(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory preconditions; a bad pid is reported through errno.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn detach(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
}

pub fn make_executable(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// What Linux appends to `/proc/self/exe` once the running file was unlinked or renamed over.
const DELETED_SUFFIX: &[u8] = b" (deleted)";

pub fn installed_path(exe: &Path) -> PathBuf {
    if exe.exists() {
        return exe.to_path_buf();
    }
    match exe.as_os_str().as_bytes().strip_suffix(DELETED_SUFFIX) {
        Some(installed) => PathBuf::from(std::ffi::OsStr::from_bytes(installed)),
        None => exe.to_path_buf(),
    }
}

pub fn attach_parent_console() {} // a Linux program always has its parent's terminal

/// Where autostart entries live; a struct so tests can point it at a temp dir.
#[derive(Debug, Clone)]
struct AutostartDirs {
    /// systemd system units (`/etc/systemd/system`).
    system_units: PathBuf,
    /// The user's XDG config home (`$XDG_CONFIG_HOME`, default `~/.config`).
    user_config: Option<PathBuf>,
}

impl AutostartDirs {
    fn from_env() -> Self {
        let user_config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")));
        AutostartDirs {
            system_units: PathBuf::from(SYSTEM_UNIT_DIR),
            user_config,
        }
    }

    fn unit_file(&self) -> PathBuf {
        self.system_units.join(SERVICE_NAME)
    }

    fn wants_link(&self) -> PathBuf {
        self.system_units
            .join(format!("{WANTED_BY}.wants"))
            .join(SERVICE_NAME)
    }

    fn desktop_file(&self) -> Result<PathBuf, SystemError> {
        let config = self
            .user_config
            .as_ref()
            .ok_or_else(|| SystemError::NotFound {
                what: "the user's config folder (neither XDG_CONFIG_HOME nor HOME is set)".into(),
            })?;
        Ok(config
            .join("autostart")
            .join(format!("{}.desktop", AUTOSTART_NAME.to_ascii_lowercase())))
    }
}

pub fn register_autostart(
    exe_path: &Path,
    args: &[OsString],
    is_admin: bool,
) -> Result<String, SystemError> {
    register_autostart_in(&AutostartDirs::from_env(), exe_path, args, is_admin)
}

pub fn unregister_autostart(is_admin: bool) -> Result<Option<String>, SystemError> {
    unregister_autostart_in(&AutostartDirs::from_env(), is_admin)
}

/// Why a user other than root could replace `exe` or put files beside it, if one could: the
/// exe and its folder must be root's and writable by nobody else; the folders above may also
/// be sticky (`/tmp`-like: others may add entries there, but not rename root's).
pub fn writable_by_standard_users(exe: &Path) -> Result<Option<String>, SystemError> {
    let inspect = |path: &Path| {
        fs::metadata(path).map_err(|source| SystemError::Os {
            what: format!("inspecting {}", path.display()),
            source,
        })
    };
    let exe_meta = inspect(exe)?;
    if let Some(why) = others_may_write(exe, &exe_meta, false) {
        return Ok(Some(why));
    }
    for (depth, folder) in exe.ancestors().skip(1).enumerate() {
        if folder.as_os_str().is_empty() {
            continue;
        }
        let sticky_is_enough = depth > 0;
        if let Some(why) = others_may_write(folder, &inspect(folder)?, sticky_is_enough) {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// Why `path` (with `meta`) is not root's alone, if it is not.
fn others_may_write(path: &Path, meta: &fs::Metadata, sticky_is_enough: bool) -> Option<String> {
    let shown = path.display();
    if meta.uid() != 0 {
        return Some(format!("{shown} belongs to uid {}, not root", meta.uid()));
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !(sticky_is_enough && sticky) {
        return Some(format!(
            "{shown} is writable by its group or by everyone (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    None
}

fn register_autostart_in(
    dirs: &AutostartDirs,
    exe_path: &Path,
    args: &[OsString],
    is_admin: bool,
) -> Result<String, SystemError> {
    let mut words = vec![exe_path.as_os_str().to_owned()];
    words.extend_from_slice(args);
    if is_admin {
        let unit = dirs.unit_file();
        write_entry(&unit, &systemd_unit(&words)?)?;
        let link = dirs.wants_link();
        replace_symlink(&unit, &link)?;
        Ok(format!(
            "systemd unit {} (enabled via {})",
            unit.display(),
            link.display()
        ))
    } else {
        let desktop = dirs.desktop_file()?;
        write_entry(&desktop, &desktop_entry(&words)?)?;
        Ok(format!("autostart entry {}", desktop.display()))
    }
}

fn unregister_autostart_in(
    dirs: &AutostartDirs,
    is_admin: bool,
) -> Result<Option<String>, SystemError> {
    let files = if is_admin {
        vec![dirs.wants_link(), dirs.unit_file()]
    } else {
        vec![dirs.desktop_file()?]
    };
    let mut removed = None;
    for file in files {
        match fs::remove_file(&file) {
            Ok(()) => removed = Some(file.display().to_string()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                let what = format!("removing {}", file.display());
                return Err(SystemError::from_io(what, err, AUTOSTART_HINT));
            }
        }
    }
    Ok(removed)
}

fn write_entry(path: &Path, content: &str) -> Result<(), SystemError> {
    let what = || format!("writing {}", path.display());
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| SystemError::from_io(what(), e, AUTOSTART_HINT))?;
    }
    fs::write(path, content).map_err(|e| SystemError::from_io(what(), e, AUTOSTART_HINT))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<(), SystemError> {
    let what = || format!("linking {} to {}", link.display(), target.display());
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).map_err(|e| SystemError::from_io(what(), e, AUTOSTART_HINT))?;
    }
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(SystemError::from_io(what(), err, AUTOSTART_HINT)),
    }
    std::os::unix::fs::symlink(target, link)
        .map_err(|e| SystemError::from_io(what(), e, AUTOSTART_HINT))
}

fn systemd_unit(words: &[OsString]) -> Result<String, SystemError> {
    let exec = quote_words(words, |c, out| match c {
        '\\' | '"' => {
            out.push('\\');
            out.push(c);
        }
        '%' => out.push_str("%%"),
        '$' => out.push_str("$$"),
        _ => out.push(c),
    })?;
    Ok(format!(
        "[Unit]\nDescription=CMS Agent\nWants=network-online.target\nAfter=network-online.target\n\
         # Never give up restarting (by default systemd stops after 5 starts in 10 s).\n\
         StartLimitIntervalSec=0\n\n\
         [Service]\nType=simple\nExecStart={exec}\n\
         # A stop is SIGTERM to the agent alone, which shuts down gracefully (exit 0) within 10 s;\n\
         # the updater it hands over to must outlive it, and starts the new version with systemctl.\n\
         KillMode=process\nTimeoutStopSec=30\n\
         # Exit 1 (another agent holds the lock) is final. Everything else is retried: 2 (no\n\
         # usable configuration yet: an operator may still write one), 4 (a task died), signals.\n\
         Restart=on-failure\nRestartPreventExitStatus=1\n\
         # 10 s, growing to 10 min over 6 failed starts (systemd 254+; older ones retry every 10 s).\n\
         RestartSec=10\nRestartSteps=6\nRestartMaxDelaySec=600\n\n\
         [Install]\nWantedBy={WANTED_BY}\n"
    ))
}

fn desktop_entry(words: &[OsString]) -> Result<String, SystemError> {
    // Desktop files unescape `\\` once as a string value, then apply Exec quoting: a literal
    // backslash therefore needs four, the other specials one (plus `%%` for a percent sign).
    let exec = quote_words(words, |c, out| match c {
        '\\' => out.push_str("\\\\\\\\"),
        '"' | '`' | '$' => {
            out.push_str("\\\\");
            out.push(c);
        }
        '%' => out.push_str("%%"),
        _ => out.push(c),
    })?;
    Ok(format!(
        "[Desktop Entry]\nType=Application\nName=CMS Agent\nExec={exec}\nNoDisplay=true\n\
         X-GNOME-Autostart-enabled=true\n"
    ))
}

/// Double-quotes every word with `escape` applied; refuses words that are not UTF-8 or hold
/// control characters, because no entry format can carry them safely.
fn quote_words(
    words: &[OsString],
    escape: impl Fn(char, &mut String),
) -> Result<String, SystemError> {
    let mut line = String::new();
    for word in words {
        let text = word.to_str().filter(|t| !t.chars().any(char::is_control));
        let Some(text) = text else {
            return Err(SystemError::Invalid {
                what: format!(
                    "autostart argument {:?}",
                    word.as_bytes().escape_ascii().to_string()
                ),
                reason: "not UTF-8 or holds control characters".into(),
            });
        };
        if !line.is_empty() {
            line.push(' ');
        }
        line.push('"');
        text.chars().for_each(|c| escape(c, &mut line));
        line.push('"');
    }
    Ok(line)
}

/// Linux keeps secrets at rest as they are, in the owner-only (0700) data folder.
pub const SEALS_AT_REST: bool = false;

pub fn seal_at_rest(_scope: SecretScope, plain: &[u8]) -> Result<Vec<u8>, SystemError> {
    Ok(plain.to_vec())
}

pub fn unseal_at_rest(sealed: &[u8]) -> Result<Vec<u8>, SystemError> {
    Ok(sealed.to_vec())
}

pub fn read_ipc_secret(
    _scope: SecretScope,
    storage_path: &Path,
) -> Result<Option<IpcSecret>, SystemError> {
    let path = storage_path.join(SECRET_FILE_NAME);
    let text = match crate::fs::read_to_string_no_follow(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            let what = format!("reading {}", path.display());
            return Err(SystemError::from_io(
                what,
                err,
                "run as the user the agent runs as",
            ));
        }
    };
    IpcSecret::parse(&text)
        .map(Some)
        .ok_or_else(|| SystemError::Invalid {
            what: path.display().to_string(),
            reason: "it does not hold a 64-digit hex secret".into(),
        })
}

/// Writes the secret to a 0600 temp file and renames it over the old one, so the secret is
/// never readable by others, not even for a moment, and never half-written.
pub fn write_ipc_secret(
    _scope: SecretScope,
    storage_path: &Path,
    secret: &IpcSecret,
) -> Result<(), SystemError> {
    let path = storage_path.join(SECRET_FILE_NAME);
    let temp = storage_path.join(format!("{SECRET_FILE_NAME}.tmp-{}", std::process::id()));
    let what = || format!("writing {}", path.display());
    let hint = "run as the user the agent runs as";
    let written = (|| {
        let _ = fs::remove_file(&temp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(secret.expose().as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(SystemError::from_io(what(), err, hint));
    }
    Ok(())
}

pub fn delete_ipc_secret(_scope: SecretScope, storage_path: &Path) -> Result<(), SystemError> {
    let path = storage_path.join(SECRET_FILE_NAME);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => {
            let what = format!("removing {}", path.display());
            Err(SystemError::from_io(
                what,
                err,
                "run as the user the agent runs as",
            ))
        }
    }
}

pub fn get_user_sid_string() -> Result<String, SystemError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    Ok(unsafe { libc::geteuid() }.to_string())
}

pub fn process_identity(pid: u32) -> Result<super::ProcessIdentity, SystemError> {
    // The owner of /proc/PID is the process's effective UID (its `dumpable` owner).
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let metadata = std::fs::metadata(&proc_dir).map_err(|source| SystemError::Os {
        what: format!("reading the account of process {pid}"),
        source,
    })?;
    Ok(super::ProcessIdentity {
        account: metadata.uid().to_string(),
        privileged: metadata.uid() == 0,
    })
}

/// Proxy variables in the order they are honoured, for `https` and for plain `http` servers.
const HTTPS_PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
const HTTP_PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

pub fn system_proxy(https: bool) -> Option<super::SystemProxy> {
    let names = if https {
        HTTPS_PROXY_VARS
    } else {
        HTTP_PROXY_VARS
    };
    let (source, proxy) = names.into_iter().find_map(|name| {
        let value = std::env::var(name).ok()?;
        (!value.trim().is_empty()).then(|| (name, value.trim().to_owned()))
    })?;
    let bypass = ["NO_PROXY", "no_proxy"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok())
        .unwrap_or_default();
    Some(super::SystemProxy {
        proxy,
        bypass,
        source,
    })
}

/// How deep the data folder's tree is walked; a deeper tree is refused (the agent's is 2 deep).
const MAX_DATA_DIR_DEPTH: usize = 16;
/// What a taken-over file's copy is called until it is renamed over the original.
const TAKEOVER_SUFFIX: &[u8] = b".cms-takeover";

pub fn secure_data_dir(path: &Path, _machine_wide: bool) -> io::Result<DataDirReport> {
    let mut report = DataDirReport::default();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) => {
            // A link (or someone else's file) where the folder goes: removed, never followed.
            let what = if meta.file_type().is_symlink() {
                "a link"
            } else if meta.uid() != 0 {
                "someone else's file"
            } else {
                return Err(io::Error::other(format!(
                    "{} is a file, not a folder",
                    path.display()
                )));
            };
            fs::remove_file(path).map_err(|err| refused(path, &uid_name(meta.uid()), err))?;
            report.changes.push(DataDirChange::Removed {
                path: path.to_path_buf(),
                what,
            });
            report.created = create_private_dir(path)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            report.created = create_private_dir(path)?;
        }
        Err(err) => return Err(err),
    }
    // O_NOFOLLOW: a link put in its place since the check above fails the open (ELOOP).
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    secure_folder(&dir, path, 0, &mut report)?;
    Ok(report)
}

/// Creates `path` with mode 0700 in the `mkdir` call itself; `false` when it appeared meanwhile
/// (then it is checked like any existing folder).
fn create_private_dir(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Makes the open folder `dir` root's and 0700, then does the same to everything in it; every
/// operation goes through a descriptor, so nothing renamed or linked meanwhile can redirect it.
fn secure_folder(
    dir: &File,
    path: &Path,
    depth: usize,
    report: &mut DataDirReport,
) -> io::Result<()> {
    if depth > MAX_DATA_DIR_DEPTH {
        return Err(io::Error::other(format!(
            "{} is nested more than {MAX_DATA_DIR_DEPTH} folders deep",
            path.display()
        )));
    }
    let meta = dir.metadata()?;
    if meta.uid() != 0 || meta.gid() != 0 {
        let owner = uid_name(meta.uid());
        std::os::unix::fs::fchown(dir, Some(0), Some(0))
            .map_err(|err| refused(path, &owner, err))?;
        if meta.uid() != 0 {
            report.changes.push(DataDirChange::TakenOver {
                path: path.to_path_buf(),
                previous_owner: owner,
            });
        }
    }
    if meta.mode() & 0o7777 != 0o700 {
        dir.set_permissions(fs::Permissions::from_mode(0o700))?;
    }
    // The entries are listed through the descriptor (/proc/self/fd/N is the folder it holds).
    let listing = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string());
    for entry in fs::read_dir(listing)? {
        let name = entry?.file_name();
        let entry_path = path.join(&name);
        let name = CString::new(name.as_bytes()).map_err(io::Error::other)?;
        let Some(stat) = lstat_at(dir, &name)? else {
            continue; // removed meanwhile
        };
        let kind = entry_kind(&stat);
        match verdict(kind, stat.st_uid == 0) {
            Verdict::Keep | Verdict::TakeOver if kind == EntryKind::Folder => {
                let sub = open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                secure_folder(&sub, &entry_path, depth + 1, report)?;
            }
            Verdict::Keep => {}
            Verdict::Remove(what) => {
                unlink_at(dir, &name)
                    .map_err(|err| refused(&entry_path, &uid_name(stat.st_uid), err))?;
                report.changes.push(DataDirChange::Removed {
                    path: entry_path,
                    what,
                });
            }
            Verdict::TakeOver => {
                let owner = uid_name(stat.st_uid);
                replace_with_own_copy(dir, &name, &stat)
                    .map_err(|err| refused(&entry_path, &owner, err))?;
                report.changes.push(DataDirChange::TakenOver {
                    path: entry_path,
                    previous_owner: owner,
                });
            }
        }
    }
    Ok(())
}

/// Replaces someone else's file `name` in `dir` by a copy that is root's and 0600, renamed over
/// it: a descriptor its owner kept open then writes to the orphaned original, never to the
/// agent's file.
fn replace_with_own_copy(dir: &File, name: &CStr, seen: &libc::stat) -> io::Result<()> {
    let mut source = open_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let meta = source.metadata()?;
    if !meta.is_file() || meta.ino() != seen.st_ino {
        return Err(io::Error::other("it changed while being checked"));
    }
    let mut temp = b".".to_vec();
    temp.extend_from_slice(name.to_bytes());
    temp.extend_from_slice(TAKEOVER_SUFFIX);
    let temp = CString::new(temp).map_err(io::Error::other)?;
    match unlink_at(dir, &temp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {} // a copy left by an interrupted takeover is gone
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut copy = open_at(dir, &temp, flags, 0o600)?;
    let copied = io::copy(&mut source, &mut copy)
        .and_then(|_| copy.set_permissions(fs::Permissions::from_mode(0o600)))
        .and_then(|()| copy.sync_all())
        .and_then(|()| rename_at(dir, &temp, name));
    if copied.is_err() {
        let _ = unlink_at(dir, &temp);
    }
    copied
}

/// `uid N`, for messages about who owned an entry.
fn uid_name(uid: u32) -> String {
    format!("uid {uid}")
}

/// What `stat` (taken without following links) describes.
fn entry_kind(stat: &libc::stat) -> EntryKind {
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFDIR => EntryKind::Folder,
        libc::S_IFREG => EntryKind::File {
            names: stat.st_nlink,
        },
        libc::S_IFLNK => EntryKind::Link,
        _ => EntryKind::Special,
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
fn open_at(dir: &File, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor and `name` NUL-terminated; the result is checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat succeeded, so `fd` is an open descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` when there is no such entry.
fn lstat_at(dir: &File, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is open, `name` NUL-terminated, `stat` points to room for one `stat`.
    let code = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if code != 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::NotFound => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: fstatat succeeded, so it filled `stat`.
    Ok(Some(unsafe { stat.assume_init() }))
}

/// `unlinkat(dir, name, 0)`: removes a file or a link itself, never what a link points to.
fn unlink_at(dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `renameat(dir, from, dir, to)`.
fn rename_at(dir: &File, from: &CStr, to: &CStr) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: `fd` is open and both names are NUL-terminated.
    if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// --- No SYSTEM code from a writable place; the package pinned while it is checked (issue 22) ---

pub fn restrict_dll_search() -> io::Result<()> {
    Ok(()) // the dynamic loader searches only the system's folders (no RPATH in our exes)
}

pub fn open_exclusive_read(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

pub fn pinned_path(file: &File, path: &Path) -> PathBuf {
    use std::os::fd::AsRawFd;
    let own = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if own.exists() {
        own
    } else {
        path.to_path_buf()
    }
}

pub fn delete_running_exe() -> io::Result<bool> {
    fs::remove_file(std::env::current_exe()?)?;
    Ok(true)
}

/// Unix has no machine policy for the agent: config.json and the command line only.
pub const POLICY_PLACE: &str = "(no machine policy on this platform)";

pub fn read_policy() -> io::Result<Vec<(String, Option<String>)>> {
    Ok(Vec::new())
}

pub fn wait_policy_change() -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_spaces_and_parens_in_the_command_name() {
        let stat =
            "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
    }

    #[test]
    fn a_zombie_does_not_run() {
        let stat = "4242 (a) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), None);
    }

    #[test]
    fn a_replaced_exe_is_found_at_its_install_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cms_agent");
        fs::write(&exe, b"new").unwrap();
        let deleted = dir.path().join("cms_agent (deleted)");
        assert_eq!(installed_path(&deleted), exe);
        assert_eq!(installed_path(&exe), exe);
        // A real file whose name ends like that is left alone.
        fs::write(&deleted, b"x").unwrap();
        assert_eq!(installed_path(&deleted), deleted);
    }

    #[test]
    fn own_process_has_a_start_time_and_a_missing_one_has_none() {
        assert!(process_start_time(std::process::id()).is_some());
        assert_eq!(process_start_time(u32::MAX), None);
    }
}

#[cfg(test)]
mod autostart_and_secret_tests {
    use super::*;

    #[test]
    fn only_an_exe_that_root_alone_can_change_may_start_with_full_rights() {
        if !is_running_as_admin() {
            eprintln!("SKIPPED: the ownership checks need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let exe = bin.join("cms_agent");
        fs::write(&exe, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(writable_by_standard_users(&exe).unwrap(), None);

        fs::set_permissions(&bin, fs::Permissions::from_mode(0o1777)).unwrap();
        let why = writable_by_standard_users(&exe).unwrap().unwrap();
        assert!(
            why.contains("writable by its group or by everyone"),
            "{why}"
        );
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

        std::os::unix::fs::chown(&exe, Some(65534), None).unwrap();
        let why = writable_by_standard_users(&exe).unwrap().unwrap();
        assert!(why.contains("uid 65534"), "{why}");
        std::os::unix::fs::chown(&exe, Some(0), None).unwrap();

        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let why = writable_by_standard_users(&exe).unwrap().unwrap();
        assert!(why.contains("uid 65534"), "a folder above: {why}");
    }

    fn dirs(root: &Path) -> AutostartDirs {
        AutostartDirs {
            system_units: root.join("etc/systemd/system"),
            user_config: Some(root.join("home/.config")),
        }
    }

    fn args() -> Vec<OsString> {
        vec!["--data-dir".into(), "/srv/cms agent/100%".into()]
    }

    #[test]
    fn root_gets_an_enabled_systemd_unit_and_loses_it_on_unregister() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let exe = Path::new("/opt/cms/cms_agent");
        let place = register_autostart_in(&dirs, exe, &args(), true).unwrap();
        assert!(place.contains("cmsagent.service"), "{place}");
        let unit = fs::read_to_string(dirs.unit_file()).unwrap();
        assert!(
            unit.contains(r#"ExecStart="/opt/cms/cms_agent" "--data-dir" "/srv/cms agent/100%%""#),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=multi-user.target"));
        // Exit 2 (nothing usable yet) is retried with backoff, for good; only 1 is final.
        assert!(unit.contains("\nRestartPreventExitStatus=1\n"), "{unit}");
        assert!(unit.contains("\nStartLimitIntervalSec=0\n"), "{unit}");
        assert!(unit.contains("\nRestartMaxDelaySec=600\n"), "{unit}");
        assert!(unit.contains("\nKillMode=process\n"), "{unit}");
        assert!(unit.contains("\nTimeoutStopSec=30\n"), "{unit}");
        assert_eq!(fs::read_link(dirs.wants_link()).unwrap(), dirs.unit_file());
        // Registering again replaces the entry instead of failing on the existing link.
        register_autostart_in(&dirs, exe, &[], true).unwrap();
        assert!(unregister_autostart_in(&dirs, true).unwrap().is_some());
        assert!(!dirs.unit_file().exists());
        assert!(fs::symlink_metadata(dirs.wants_link()).is_err());
        assert!(unregister_autostart_in(&dirs, true).unwrap().is_none());
    }

    #[test]
    fn a_user_gets_an_xdg_autostart_entry() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        register_autostart_in(&dirs, Path::new("/home/u/cms_agent"), &args(), false).unwrap();
        let desktop = fs::read_to_string(dirs.desktop_file().unwrap()).unwrap();
        assert!(
            desktop.contains(r#"Exec="/home/u/cms_agent" "--data-dir" "/srv/cms agent/100%%""#),
            "{desktop}"
        );
        assert!(!dirs.unit_file().exists());
        assert!(unregister_autostart_in(&dirs, false).unwrap().is_some());
        assert!(unregister_autostart_in(&dirs, false).unwrap().is_none());
    }

    #[test]
    fn control_characters_are_refused_and_a_read_only_place_is_permission_denied() {
        let root = tempfile::tempdir().unwrap();
        let dirs = dirs(root.path());
        let bad = vec![OsString::from("a\nExecStartPre=/bin/evil")];
        let err = register_autostart_in(&dirs, Path::new("/x"), &bad, true).unwrap_err();
        assert!(matches!(err, SystemError::Invalid { .. }), "{err}");
        if is_running_as_admin() {
            return; // root ignores file modes; the permission path cannot be shown here
        }
        fs::create_dir_all(&dirs.system_units).unwrap();
        fs::set_permissions(&dirs.system_units, fs::Permissions::from_mode(0o500)).unwrap();
        let err = register_autostart_in(&dirs, Path::new("/x"), &[], true).unwrap_err();
        assert!(matches!(err, SystemError::PermissionDenied { .. }), "{err}");
        assert!(err.to_string().contains("run as root"), "{err}");
    }

    #[test]
    fn the_secret_file_is_0600_hex_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let scope = SecretScope::User;
        assert!(read_ipc_secret(scope, dir.path()).unwrap().is_none());
        let secret = IpcSecret::generate().unwrap();
        write_ipc_secret(scope, dir.path(), &secret).unwrap();
        let path = dir.path().join(SECRET_FILE_NAME);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_ipc_secret(scope, dir.path()).unwrap(), Some(secret));
        delete_ipc_secret(scope, dir.path()).unwrap();
        assert!(read_ipc_secret(scope, dir.path()).unwrap().is_none());
        delete_ipc_secret(scope, dir.path()).unwrap(); // twice is fine
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            read_ipc_secret(scope, dir.path()),
            Err(SystemError::Invalid { .. })
        ));
    }
}

#[cfg(test)]
mod data_dir_tests {
    //! The takeover of a data folder someone else made; as root only (CI runs as root).

    use super::*;
    use std::os::unix::fs::{chown, symlink};

    /// Whether the test can run; prints why not.
    fn root() -> bool {
        let root = is_running_as_admin();
        if !root {
            println!("SKIPPED: needs root");
        }
        root
    }

    #[test]
    fn a_fresh_folder_is_created_private() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/data");
        let report = secure_data_dir(&data, true).unwrap();
        assert!(report.created && !report.taken_over(), "{report:?}");
        assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
        // Twice: the agent's own folder is left as it is.
        fs::write(data.join("config.json"), b"{}").unwrap();
        assert_eq!(
            secure_data_dir(&data, true).unwrap(),
            DataDirReport::default()
        );
        assert_eq!(fs::read(data.join("config.json")).unwrap(), b"{}");
    }

    #[test]
    fn someone_elses_folder_is_taken_over_and_its_links_removed_unfollowed() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (data, outside) = (dir.path().join("data"), dir.path().join("outside"));
        fs::create_dir_all(data.join("tuf")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"keep").unwrap();
        fs::write(data.join("config.json"), b"planted").unwrap();
        symlink(&outside, data.join("logs")).unwrap();
        symlink(outside.join("victim"), data.join("tuf/root.json")).unwrap();
        fs::hard_link(outside.join("victim"), data.join("agent.lock")).unwrap();
        for path in [&data, &data.join("tuf"), &data.join("config.json")] {
            chown(path, Some(65534), Some(65534)).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut held = fs::OpenOptions::new()
            .append(true)
            .open(data.join("config.json"))
            .unwrap();

        let report = secure_data_dir(&data, true).unwrap();
        assert!(!report.created && report.taken_over(), "{report:?}");
        let text = report
            .changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(&format!(
                "took over {} (owned by uid 65534)",
                data.display()
            )),
            "{text}"
        );
        for (path, mode) in [(&data, 0o700), (&data.join("tuf"), 0o700)] {
            let meta = fs::symlink_metadata(path).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, mode), "{path:?}");
        }
        let config = fs::symlink_metadata(data.join("config.json")).unwrap();
        assert_eq!((config.uid(), config.mode() & 0o777), (0, 0o600));
        assert_eq!(fs::read(data.join("config.json")).unwrap(), b"planted");
        // The previous owner's open descriptor writes to the replaced original, not the copy.
        held.write_all(b" and more").unwrap();
        assert_eq!(fs::read(data.join("config.json")).unwrap(), b"planted");
        for gone in ["logs", "tuf/root.json", "agent.lock"] {
            assert!(fs::symlink_metadata(data.join(gone)).is_err(), "{gone}");
        }
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_link_in_place_of_the_folder_is_replaced_by_a_real_one() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (data, outside) = (dir.path().join("data"), dir.path().join("outside"));
        fs::create_dir(&outside).unwrap();
        symlink(&outside, &data).unwrap();
        let report = secure_data_dir(&data, true).unwrap();
        assert!(report.created && report.taken_over(), "{report:?}");
        let meta = fs::symlink_metadata(&data).unwrap();
        assert!(meta.is_dir() && meta.mode() & 0o7777 == 0o700);
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o755);
    }
}

#[cfg(test)]
mod pinning_tests {
    use super::super::{open_exclusive_read, pinned_path};
    use std::fs;
    use std::io::Read;

    #[test]
    fn the_pinned_path_names_the_opened_file_after_another_is_renamed_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("package.zip");
        fs::write(&path, b"checked").unwrap();
        let file = open_exclusive_read(&path).unwrap();
        let other = dir.path().join("other");
        fs::write(&other, b"planted").unwrap();
        fs::rename(&other, &path).unwrap();
        let mut read = Vec::new();
        fs::File::open(pinned_path(&file, &path))
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, b"checked");
    }

    #[test]
    fn a_link_or_a_folder_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_exclusive_read(&link).is_err());
        assert!(open_exclusive_read(dir.path()).is_err());
        assert!(open_exclusive_read(&target).is_ok());
    }
}
