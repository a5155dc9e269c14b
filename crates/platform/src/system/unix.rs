//! Linux implementation of the `system` API: POSIX permissions, `flock`, `/proc`, signals,
//! systemd/XDG autostart entries and the IPC secret file.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::service::SERVICE_NAME;
use super::{AUTOSTART_NAME, IpcSecret, SecretScope, SystemError};

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

pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
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

pub fn read_ipc_secret(
    _scope: SecretScope,
    storage_path: &Path,
) -> Result<Option<IpcSecret>, SystemError> {
    let path = storage_path.join(SECRET_FILE_NAME);
    let text = match fs::read_to_string(&path) {
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
    fn a_private_file_is_0600_even_when_it_existed_wider() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private_file(&path).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"");
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
