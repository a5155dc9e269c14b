//! Windows implementation of the `system` API, through `windows-sys`: elevation, the storage
//! DACL, `LockFileEx`, the autostart entry (the service `CMSAgent` machine-wide, through
//! `service/`; the HKCU `Run` value per user), the IPC secret (Credential Manager per user,
//! a DPAPI machine-key file machine-wide), the parent console and the user's SID.
//!
//! Every `unsafe` block is one Win32 call with its `// SAFETY:` reasoning; handles are owned by
//! `std::os::windows::io::OwnedHandle`, so they are closed on every path.

use std::ffi::{OsStr, OsString, c_void};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};

use super::{AUTOSTART_NAME, IpcSecret, SecretScope, SystemError};

use windows_sys::Win32::Foundation::{
    ERROR_LOCK_VIOLATION, ERROR_NOT_FOUND, ERROR_SUCCESS, FILETIME, HANDLE, LocalFree,
    STILL_ACTIVE, WIN32_ERROR,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW, SDDL_REVISION_1,
    SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::Credentials::{
    CRED_PERSIST_LOCAL_MACHINE, CRED_TYPE_GENERIC, CREDENTIALW, CredFree, CredReadW, CredWriteW,
};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, GetAce,
    GetSecurityDescriptorDacl, GetTokenInformation, INHERIT_ONLY_ACE, OWNER_SECURITY_INFORMATION,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, TOKEN_ELEVATION, TOKEN_QUERY,
    TOKEN_USER, TokenElevation, TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE,
    GetFileInformationByHandle, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, LockFileEx,
};
use windows_sys::Win32::System::IO::OVERLAPPED;
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, REG_SZ, RegDeleteKeyValueW, RegSetKeyValueW,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetExitCodeProcess, GetProcessTimes, OpenProcess, OpenProcessToken,
    PROCESS_QUERY_LIMITED_INFORMATION,
};

pub const PLATFORM: &str = "windows-x86_64";

/// Offset of the one byte the agent locks: far past any content, because Windows byte-range
/// locks are mandatory and readers (the updater) must still read the PID and timestamp.
const LOCK_OFFSET: u64 = 1 << 62;

/// Full control for SYSTEM and Administrators only, inheritance from the parent cut off.
const STORAGE_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

pub fn is_running_as_admin() -> bool {
    own_token()
        .and_then(|token| token_is_elevated(&token))
        .unwrap_or(false)
}

/// This process's access token.
fn own_token() -> io::Result<OwnedHandle> {
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    open_process_token(unsafe { GetCurrentProcess() })
}

/// The access token of `process` (a real or pseudo process handle), for queries.
fn open_process_token(process: HANDLE) -> io::Result<OwnedHandle> {
    let mut raw: HANDLE = std::ptr::null_mut();
    // SAFETY: `process` is a valid process handle for the call; `raw` is a valid out pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut raw) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: OpenProcessToken succeeded, so `raw` is an open handle we now own.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

fn token_is_elevated(token: &OwnedHandle) -> io::Result<bool> {
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut returned = 0u32;
    // SAFETY: the buffer is a TOKEN_ELEVATION of the size passed; `token` is a valid token.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenElevation,
            (&mut elevation as *mut TOKEN_ELEVATION).cast::<c_void>(),
            size_of::<TOKEN_ELEVATION>() as u32,
            &mut returned,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(elevation.TokenIsElevated != 0)
}

pub fn default_data_dir(machine_wide: bool) -> Option<PathBuf> {
    use windows_sys::Win32::UI::Shell::{FOLDERID_LocalAppData, FOLDERID_ProgramData};
    let (folder, variable) = if machine_wide {
        (&FOLDERID_ProgramData, "PROGRAMDATA")
    } else {
        (&FOLDERID_LocalAppData, "LOCALAPPDATA")
    };
    // The known folder first: a service's environment need not carry %PROGRAMDATA% (Wine's
    // services.exe passes none).
    let root = known_folder(folder).or_else(|| {
        std::env::var_os(variable)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })?;
    Some(root.join("CMSAgent"))
}

/// The path of a known folder (`%PROGRAMDATA%`, `%LOCALAPPDATA%`) from the shell.
fn known_folder(id: &windows_sys::core::GUID) -> Option<PathBuf> {
    use windows_sys::Win32::System::Com::CoTaskMemFree;
    use windows_sys::Win32::UI::Shell::{KF_FLAG_DEFAULT, SHGetKnownFolderPath};
    let mut path: *mut u16 = std::ptr::null_mut();
    // SAFETY: `id` is a valid GUID; a null token means the current user; `path` receives a
    // CoTaskMemAlloc'ed string (also on failure, possibly null), freed below.
    let code = unsafe {
        SHGetKnownFolderPath(id, KF_FLAG_DEFAULT as u32, std::ptr::null_mut(), &mut path)
    };
    // SAFETY: on success `path` is a NUL-terminated string.
    let found =
        (code >= 0 && !path.is_null()).then(|| PathBuf::from(unsafe { from_wide_ptr(path) }));
    // SAFETY: allocated by SHGetKnownFolderPath (null is allowed), freed once.
    unsafe { CoTaskMemFree(path.cast()) };
    found
}

pub fn set_directory_acls(path: &Path, machine_wide: bool) -> io::Result<()> {
    if !machine_wide {
        // %LOCALAPPDATA% is already private to the user; only the machine-wide folder needs a DACL.
        return Ok(());
    }
    apply_protected_dacl(path)
}

/// Replaces `path`'s DACL with [`STORAGE_SDDL`] (protected: nothing inherited from the parent).
fn apply_protected_dacl(path: &Path) -> io::Result<()> {
    let descriptor = SecurityDescriptor::from_sddl(STORAGE_SDDL)?;
    let (mut present, mut defaulted) = (0, 0);
    let mut dacl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `descriptor` is valid; the out pointers live on this stack frame. The DACL
    // pointer points into `descriptor`, which outlives its use below.
    if unsafe {
        GetSecurityDescriptorDacl(descriptor.as_ptr(), &mut present, &mut dacl, &mut defaulted)
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    let target = wide(path.as_os_str());
    // SAFETY: `target` is NUL-terminated; `dacl` is valid (above); owner, group and SACL are
    // not changed, so their pointers are null.
    let code = unsafe {
        SetNamedSecurityInfoW(
            target.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            dacl,
            std::ptr::null_mut(),
        )
    };
    win32_result(code)?;
    tracing::info!(path = %path.display(), sddl = STORAGE_SDDL, "protected DACL applied to the storage path");
    Ok(())
}

/// A security descriptor built from SDDL, freed (`LocalFree`) on drop; for files and pipes.
#[derive(Debug)]
pub struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

impl SecurityDescriptor {
    /// Converts `sddl` (such as `D:P(A;;GA;;;SY)`) into a self-relative descriptor.
    pub fn from_sddl(sddl: &str) -> io::Result<Self> {
        let text = wide(OsStr::new(sddl));
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `text` is NUL-terminated; `descriptor` receives a LocalAlloc'ed buffer.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SecurityDescriptor(descriptor))
    }

    /// The raw descriptor, valid while `self` lives.
    pub fn as_ptr(&self) -> PSECURITY_DESCRIPTOR {
        self.0
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ConvertStringSecurityDescriptorToSecurityDescriptorW
        // and is freed exactly once, here.
        unsafe { LocalFree(self.0) };
    }
}

pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: OVERLAPPED is plain data; zeroed is its documented initial state.
    let mut overlapped: OVERLAPPED = unsafe { std::mem::zeroed() };
    overlapped.Anonymous.Anonymous.Offset = LOCK_OFFSET as u32;
    overlapped.Anonymous.Anonymous.OffsetHigh = (LOCK_OFFSET >> 32) as u32;
    // SAFETY: the handle is open for the lifetime of `file`; `overlapped` outlives the call,
    // which completes synchronously because LOCKFILE_FAIL_IMMEDIATELY is set.
    let ok = unsafe {
        LockFileEx(
            file.as_raw_handle(),
            LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
            0,
            1,
            0,
            &mut overlapped,
        )
    };
    if ok != 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
        return Ok(false);
    }
    Err(err)
}

pub fn is_same_file(file: &File, path: &Path) -> io::Result<bool> {
    let named = match OpenOptions::new()
        .access_mode(0)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .open(path)
    {
        Ok(named) => named,
        // A file that is gone or pending deletion is no longer the lock file.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(false);
        }
        Err(err) => return Err(err),
    };
    Ok(file_identity(file)? == file_identity(&named)?)
}

fn file_identity(file: &File) -> io::Result<(u32, u32, u32)> {
    // SAFETY: BY_HANDLE_FILE_INFORMATION is plain data; the call fills it.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is open for the lifetime of `file`; `info` is a valid out pointer.
    if unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        info.dwVolumeSerialNumber,
        info.nFileIndexHigh,
        info.nFileIndexLow,
    ))
}

pub fn process_start_time(pid: u32) -> Option<u64> {
    // SAFETY: OpenProcess has no memory preconditions; a null result means failure.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if raw.is_null() {
        return None;
    }
    // SAFETY: OpenProcess succeeded, so `raw` is an open handle we now own.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    let mut exit_code = 0u32;
    // SAFETY: valid process handle and out pointer.
    if unsafe { GetExitCodeProcess(process.as_raw_handle(), &mut exit_code) } == 0
        || exit_code != STILL_ACTIVE as u32
    {
        return None;
    }
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: valid process handle; the four FILETIME out pointers live on this stack frame.
    let ok = unsafe {
        GetProcessTimes(
            process.as_raw_handle(),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    (ok != 0).then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

#[cfg(feature = "signals")]
pub async fn shutdown_signal() -> io::Result<()> {
    use tokio::signal::windows;
    let mut ctrl_c = windows::ctrl_c()?;
    let mut ctrl_break = windows::ctrl_break()?;
    let mut close = windows::ctrl_close()?;
    let mut shutdown = windows::ctrl_shutdown()?;
    let event = tokio::select! {
        _ = ctrl_c.recv() => "CTRL_C",
        _ = ctrl_break.recv() => "CTRL_BREAK",
        _ = close.recv() => "CTRL_CLOSE",
        _ = shutdown.recv() => "CTRL_SHUTDOWN",
    };
    tracing::info!(event, "stop requested by the OS");
    Ok(())
}

pub fn terminate_process(pid: u32) -> io::Result<()> {
    use windows_sys::Win32::System::Threading::{PROCESS_TERMINATE, TerminateProcess};
    // SAFETY: OpenProcess has no memory preconditions; a null result means failure.
    let raw = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: OpenProcess succeeded, so `raw` is an open handle we now own.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    // SAFETY: valid process handle opened with PROCESS_TERMINATE.
    if unsafe { TerminateProcess(process.as_raw_handle(), 1) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn detach(command: &mut std::process::Command) {
    use std::os::windows::process::CommandExt;
    use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, DETACHED_PROCESS};
    command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
}

pub fn make_executable(_path: &Path) -> io::Result<()> {
    Ok(()) // an .exe is runnable by its name alone
}

pub fn installed_path(exe: &Path) -> PathBuf {
    exe.to_path_buf() // the path the exe was started from: the install path
}

pub fn attach_parent_console() {
    use windows_sys::Win32::Foundation::{GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::Storage::FileSystem::{CreateFileW, OPEN_EXISTING};
    use windows_sys::Win32::System::Console::{
        ATTACH_PARENT_PROCESS, AttachConsole, GetStdHandle, STD_ERROR_HANDLE, STD_HANDLE,
        STD_OUTPUT_HANDLE, SetStdHandle,
    };
    let usable = |id: STD_HANDLE| {
        // SAFETY: GetStdHandle has no memory preconditions; it only reads the process's table.
        let handle = unsafe { GetStdHandle(id) };
        !handle.is_null() && handle != INVALID_HANDLE_VALUE
    };
    let ids = [STD_OUTPUT_HANDLE, STD_ERROR_HANDLE];
    // Redirected (a file, a pipe, the installer's Exec): keep it.
    if ids.iter().all(|id| usable(*id)) {
        return;
    }
    // SAFETY: no memory preconditions; failure (no parent console: a service, a logon start)
    // leaves the process as it was, and then there is nowhere to print.
    if unsafe { AttachConsole(ATTACH_PARENT_PROCESS) } == 0 {
        return;
    }
    let name = wide(OsStr::new("CONOUT$"));
    // SAFETY: `name` is NUL-terminated; no security attributes or template handle.
    let console = unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            0,
            std::ptr::null_mut(),
        )
    };
    if console == INVALID_HANDLE_VALUE {
        return;
    }
    for id in ids.into_iter().filter(|id| !usable(*id)) {
        // SAFETY: `console` is an open handle; the standard-handle table keeps it for the rest
        // of the process (it is never closed, like the handles a console program starts with).
        unsafe { SetStdHandle(id, console) };
    }
}

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Reads a NUL-terminated UTF-16 string.
///
/// # Safety
/// `ptr` must point to a NUL-terminated UTF-16 string that stays valid during the call.
unsafe fn from_wide_ptr(ptr: *const u16) -> String {
    let mut len = 0;
    // SAFETY: the caller guarantees a terminating NUL, so every read up to it is in bounds.
    while unsafe { *ptr.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` units before the NUL were just read, so they are valid.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(ptr, len) })
}

pub fn get_user_sid_string() -> Result<String, SystemError> {
    let os = |source| SystemError::Os {
        what: "reading the current user's SID".into(),
        source,
    };
    own_token()
        .and_then(|token| token_user_sid(&token))
        .map_err(os)
}

pub fn process_identity(pid: u32) -> Result<super::ProcessIdentity, SystemError> {
    let os = |source| SystemError::Os {
        what: format!("reading the account of process {pid}"),
        source,
    };
    // SAFETY: OpenProcess has no memory preconditions; a null result means failure.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if raw.is_null() {
        return Err(os(io::Error::last_os_error()));
    }
    // SAFETY: OpenProcess succeeded, so `raw` is an open handle we now own.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    let token = open_process_token(process.as_raw_handle()).map_err(os)?;
    Ok(super::ProcessIdentity {
        account: token_user_sid(&token).map_err(os)?,
        privileged: token_is_elevated(&token).map_err(os)?,
    })
}

/// The SID (`S-1-5-...`) of the user a token belongs to.
fn token_user_sid(token: &OwnedHandle) -> io::Result<String> {
    let mut needed = 0u32;
    // SAFETY: a null buffer of size 0 only asks for the needed size (the call "fails" with
    // ERROR_INSUFFICIENT_BUFFER, which is expected).
    unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            std::ptr::null_mut(),
            0,
            &mut needed,
        )
    };
    // u64 elements keep the buffer aligned for TOKEN_USER and the SID that follows it.
    let mut buffer = vec![0u64; (needed as usize).div_ceil(8).max(1)];
    // SAFETY: the buffer holds at least `needed` bytes; `token` is a valid token handle.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buffer.as_mut_ptr().cast::<c_void>(),
            needed,
            &mut needed,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so the buffer starts with a TOKEN_USER whose SID pointer
    // points into the same buffer, which outlives this use.
    let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    data_folder::sid_string(sid)
}

/// The accounts that may write where a SYSTEM program lives: SYSTEM, Administrators,
/// TrustedInstaller.
const TRUSTED_WRITERS: [&str; 3] = [
    "S-1-5-18",
    "S-1-5-32-544",
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464",
];

/// `ACCESS_ALLOWED_ACE_TYPE` (winnt.h; in a `windows-sys` feature this crate does not enable).
const ACCESS_ALLOWED_ACE_TYPE: u32 = 0;

/// Rights that let an account change a file or a folder's entries: write or append data (add a
/// file or a subfolder), delete children, delete, change the DACL or the owner, generic write
/// and all.
const WRITE_RIGHTS: u32 =
    0x2 | 0x4 | 0x40 | 0x1_0000 | 0x4_0000 | 0x8_0000 | 0x1000_0000 | 0x4000_0000;

pub fn writable_by_standard_users(exe: &Path) -> Result<Option<String>, SystemError> {
    if running_under_wine() {
        // Wine keeps no owners or DACLs on files: there is nothing true to check.
        tracing::warn!(exe = %exe.display(), "under Wine: who may write the exe's folder cannot be checked");
        return Ok(None);
    }
    let folder = exe.parent().unwrap_or(exe);
    for path in [exe, folder] {
        let why = others_may_write(path).map_err(|source| SystemError::Os {
            what: format!("reading who may write {}", path.display()),
            source,
        })?;
        if let Some(why) = why {
            return Ok(Some(format!("{}: {why}", path.display())));
        }
    }
    Ok(None)
}

/// Who other than [`TRUSTED_WRITERS`] owns `path` or may change it, if anyone.
fn others_may_write(path: &Path) -> io::Result<Option<String>> {
    let name = wide(path.as_os_str());
    let (mut owner, mut dacl): (PSID, *mut ACL) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; the out pointers are valid; the descriptor is
    // LocalAlloc'ed and owned below, and `owner`/`dacl` point into it.
    let status = unsafe {
        GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if status != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    let _owned = SecurityDescriptor(descriptor);
    // `owner` points into the descriptor, alive while `_owned` is.
    let owner = data_folder::sid_string(owner)?;
    if !TRUSTED_WRITERS.contains(&owner.as_str()) {
        return Ok(Some(format!("owned by {owner}, who may change its DACL")));
    }
    if dacl.is_null() {
        return Ok(Some("it has no DACL, so everyone may write".into()));
    }
    // SAFETY: a non-null DACL from the call above, alive while `_owned` is.
    let count = unsafe { (*dacl).AceCount };
    for index in 0..u32::from(count) {
        let mut ace: *mut c_void = std::ptr::null_mut();
        // SAFETY: `index` is below the ACL's count; `ace` receives a pointer into the ACL.
        if unsafe { GetAce(dacl, index, &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every ACE starts with an ACE_HEADER.
        let header = unsafe { &*ace.cast::<ACE_HEADER>() };
        let applies = u32::from(header.AceFlags) & INHERIT_ONLY_ACE == 0;
        if u32::from(header.AceType) != ACCESS_ALLOWED_ACE_TYPE || !applies {
            continue;
        }
        // SAFETY: an ACCESS_ALLOWED_ACE (its type was checked); its SID starts at SidStart.
        let allowed = unsafe { &*ace.cast::<ACCESS_ALLOWED_ACE>() };
        if allowed.Mask & WRITE_RIGHTS == 0 {
            continue;
        }
        let sid = (&raw const allowed.SidStart).cast_mut().cast::<c_void>();
        // The SID lies inside the ACE, alive while `_owned` is.
        let account = data_folder::sid_string(sid)?;
        if !TRUSTED_WRITERS.contains(&account.as_str()) {
            return Ok(Some(format!("{account} may write to it")));
        }
    }
    Ok(None)
}

/// `HKLM`/`HKCU` `...\CurrentVersion\Run`: where Windows finds programs to start at logon.
const RUN_KEY: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";
/// Advice when the registry refuses.
const AUTOSTART_HINT: &str = "run elevated (as administrator) to change the machine-wide entry (the service), or without elevation for your own (HKCU)";

/// A `Run` key: HKCU's for the per-user agent, HKLM's where older versions put the
/// machine-wide one (removed now: it started a non-elevated copy at every user's logon).
#[derive(Debug, Clone, Copy)]
enum RunKey {
    User,
    LegacyMachine,
}

impl RunKey {
    fn root(self) -> HKEY {
        match self {
            RunKey::User => HKEY_CURRENT_USER,
            RunKey::LegacyMachine => HKEY_LOCAL_MACHINE,
        }
    }

    /// `HKCU\...\Run\CMSAgent`, for the operator.
    fn place(self) -> String {
        let hive = match self {
            RunKey::User => "HKCU",
            RunKey::LegacyMachine => "HKLM",
        };
        format!(r"{hive}\{RUN_KEY}\{AUTOSTART_NAME}")
    }

    fn write(self, command: &str) -> Result<String, SystemError> {
        let data = wide(OsStr::new(command));
        let key = wide(OsStr::new(RUN_KEY));
        let name = wide(OsStr::new(AUTOSTART_NAME));
        // SAFETY: all strings are NUL-terminated; `data` holds `data.len() * 2` bytes of REG_SZ
        // including its terminator, as the API requires.
        let code = unsafe {
            RegSetKeyValueW(
                self.root(),
                key.as_ptr(),
                name.as_ptr(),
                REG_SZ,
                data.as_ptr().cast::<c_void>(),
                (data.len() * 2) as u32,
            )
        };
        let place = self.place();
        win32_result(code)
            .map_err(|e| SystemError::from_io(format!("writing {place}"), e, AUTOSTART_HINT))?;
        Ok(place)
    }

    /// Removes the value; `Ok(None)` when there was none.
    fn remove(self) -> Result<Option<String>, SystemError> {
        let key = wide(OsStr::new(RUN_KEY));
        let name = wide(OsStr::new(AUTOSTART_NAME));
        // SAFETY: both strings are NUL-terminated; the root is a predefined key.
        let code = unsafe { RegDeleteKeyValueW(self.root(), key.as_ptr(), name.as_ptr()) };
        let place = self.place();
        match win32_result(code) {
            Ok(()) => Ok(Some(place)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(SystemError::from_io(
                format!("removing {place}"),
                err,
                AUTOSTART_HINT,
            )),
        }
    }
}

/// Turns a Win32 status code into a `Result`.
fn win32_result(code: WIN32_ERROR) -> io::Result<()> {
    if code == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code as i32))
    }
}

pub fn register_autostart(
    exe_path: &Path,
    args: &[OsString],
    machine_wide: bool,
) -> Result<String, SystemError> {
    if !machine_wide {
        return RunKey::User.write(&command_line(exe_path, args)?);
    }
    let installed = super::service::install(exe_path, args)?;
    let mut place = format!("{}; recovery: {}", installed.place, installed.recovery);
    if let Some(legacy) = RunKey::LegacyMachine.remove()? {
        tracing::info!(place = %legacy, "removed the machine-wide Run value of an older version");
        place.push_str(&format!("; removed the old {legacy}"));
    }
    Ok(place)
}

pub fn unregister_autostart(machine_wide: bool) -> Result<Option<String>, SystemError> {
    if !machine_wide {
        return RunKey::User.remove();
    }
    let removed: Vec<String> = [super::service::delete()?, RunKey::LegacyMachine.remove()?]
        .into_iter()
        .flatten()
        .collect();
    Ok((!removed.is_empty()).then(|| removed.join(" and ")))
}

/// `"exe" "arg" ...` with the quoting rules of `CommandLineToArgvW`: backslashes before a
/// closing quote are doubled; a word holding a quote or a control character is refused.
fn command_line(exe_path: &Path, args: &[OsString]) -> Result<String, SystemError> {
    let mut line = String::new();
    for word in std::iter::once(exe_path.as_os_str()).chain(args.iter().map(|a| a.as_os_str())) {
        let text = word
            .to_str()
            .filter(|t| !t.contains('"') && !t.chars().any(char::is_control));
        let Some(text) = text else {
            return Err(SystemError::Invalid {
                what: format!("autostart argument {word:?}"),
                reason: "not Unicode, or holds a quote or a control character".into(),
            });
        };
        if !line.is_empty() {
            line.push(' ');
        }
        let trailing = text.len() - text.trim_end_matches('\\').len();
        line.push('"');
        line.push_str(text);
        line.push_str(&"\\".repeat(trailing));
        line.push('"');
    }
    Ok(line)
}

/// Name of the generic credential holding the per-user agent's IPC secret.
fn credential_target() -> String {
    format!("{AUTOSTART_NAME}/ipc/{}", SecretScope::User.as_str())
}

/// The machine-wide agent's secret file in its (protected) storage path.
const SECRET_FILE_NAME: &str = "ipc.secret";
/// Ties the DPAPI blob to this one purpose.
const SECRET_ENTROPY: &[u8] = b"CMSAgent/ipc/system";

/// Frees a credential returned by `CredReadW` on every path.
struct CredentialGuard(*mut CREDENTIALW);

impl Drop for CredentialGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful CredReadW and is freed once, here.
        unsafe { CredFree(self.0.cast::<c_void>()) };
    }
}

fn parse_secret(bytes: &[u8], what: String) -> Result<Option<IpcSecret>, SystemError> {
    let parsed = std::str::from_utf8(bytes).ok().and_then(IpcSecret::parse);
    parsed.map(Some).ok_or_else(|| SystemError::Invalid {
        what,
        reason: "it does not hold a 64-digit hex secret".into(),
    })
}

pub fn read_ipc_secret(
    scope: SecretScope,
    storage_path: &Path,
) -> Result<Option<IpcSecret>, SystemError> {
    match scope {
        SecretScope::User => read_credential(),
        SecretScope::System => read_machine_secret(storage_path),
    }
}

pub fn write_ipc_secret(
    scope: SecretScope,
    storage_path: &Path,
    secret: &IpcSecret,
) -> Result<(), SystemError> {
    match scope {
        SecretScope::User => write_credential(secret),
        SecretScope::System => write_machine_secret(storage_path, secret),
    }
}

pub fn delete_ipc_secret(scope: SecretScope, storage_path: &Path) -> Result<(), SystemError> {
    match scope {
        SecretScope::User => delete_credential(),
        SecretScope::System => {
            let path = storage_path.join(SECRET_FILE_NAME);
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(SystemError::from_io(
                    format!("removing {}", path.display()),
                    err,
                    MACHINE_SECRET_HINT,
                )),
                _ => Ok(()),
            }
        }
    }
}

const USER_SECRET_HINT: &str = "run as the user the agent runs as";
const MACHINE_SECRET_HINT: &str = "run elevated (as administrator): the machine-wide agent's folder is for SYSTEM and Administrators only";

fn read_credential() -> Result<Option<IpcSecret>, SystemError> {
    let target_name = credential_target();
    let target = wide(OsStr::new(&target_name));
    let mut credential: *mut CREDENTIALW = std::ptr::null_mut();
    // SAFETY: `target` is NUL-terminated; `credential` receives a buffer we free with CredFree.
    if unsafe { CredReadW(target.as_ptr(), CRED_TYPE_GENERIC, 0, &mut credential) } == 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(ERROR_NOT_FOUND as i32) {
            return Ok(None);
        }
        let what = format!("reading credential {target_name}");
        return Err(SystemError::from_io(what, err, USER_SECRET_HINT));
    }
    let guard = CredentialGuard(credential);
    // SAFETY: CredReadW succeeded, so the pointer is a valid CREDENTIALW until CredFree.
    let (blob, size) = unsafe { ((*guard.0).CredentialBlob, (*guard.0).CredentialBlobSize) };
    let bytes = if blob.is_null() || size == 0 {
        &[][..]
    } else {
        // SAFETY: the credential owns `size` bytes at `blob`, alive until `guard` drops.
        unsafe { std::slice::from_raw_parts(blob, size as usize) }
    };
    parse_secret(bytes, format!("credential {target_name}"))
}

fn write_credential(secret: &IpcSecret) -> Result<(), SystemError> {
    let target_name = credential_target();
    let mut target = wide(OsStr::new(&target_name));
    let mut user = wide(OsStr::new(AUTOSTART_NAME));
    let mut blob = secret.expose().as_bytes().to_vec();
    let credential = CREDENTIALW {
        Type: CRED_TYPE_GENERIC,
        TargetName: target.as_mut_ptr(),
        CredentialBlobSize: blob.len() as u32,
        CredentialBlob: blob.as_mut_ptr(),
        Persist: CRED_PERSIST_LOCAL_MACHINE,
        UserName: user.as_mut_ptr(),
        ..Default::default()
    };
    // SAFETY: every pointer in `credential` points into a buffer alive for the whole call.
    if unsafe { CredWriteW(&credential, 0) } == 0 {
        let what = format!("writing credential {target_name}");
        return Err(SystemError::from_io(
            what,
            io::Error::last_os_error(),
            USER_SECRET_HINT,
        ));
    }
    Ok(())
}

pub fn system_proxy(https: bool) -> Option<super::SystemProxy> {
    let (list, bypass, source) = winhttp_default_proxy().or_else(user_proxy)?;
    let proxy = super::proxy_for_scheme(&list, https)?;
    Some(super::SystemProxy {
        proxy,
        bypass,
        source,
    })
}

/// A string WinHTTP allocated; freed with `GlobalFree` on drop.
struct WinHttpString(windows_sys::core::PWSTR);

impl WinHttpString {
    fn to_string_lossy(&self) -> String {
        if self.0.is_null() {
            return String::new();
        }
        // SAFETY: WinHTTP returns NUL-terminated wide strings; the pointer is non-null and
        // stays valid until this guard frees it.
        let len = (0..)
            .take_while(|&i| unsafe { *self.0.add(i) } != 0)
            .count();
        // SAFETY: `len` code units were just read from this allocation.
        let units = unsafe { std::slice::from_raw_parts(self.0, len) };
        String::from_utf16_lossy(units)
    }
}

impl Drop for WinHttpString {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the string was allocated by WinHTTP with GlobalAlloc and is freed once.
            unsafe { windows_sys::Win32::Foundation::GlobalFree(self.0.cast()) };
        }
    }
}

/// The machine's WinHTTP proxy (`netsh winhttp set proxy`): list, bypass, source.
fn winhttp_default_proxy() -> Option<(String, String, &'static str)> {
    use windows_sys::Win32::Networking::WinHttp::{
        WINHTTP_ACCESS_TYPE_NAMED_PROXY, WINHTTP_PROXY_INFO, WinHttpGetDefaultProxyConfiguration,
    };
    let mut info = WINHTTP_PROXY_INFO::default();
    // SAFETY: `info` is a valid out-structure; WinHTTP fills its string fields or leaves them null.
    let ok = unsafe { WinHttpGetDefaultProxyConfiguration(&mut info) } != 0;
    let proxy = WinHttpString(info.lpszProxy);
    let bypass = WinHttpString(info.lpszProxyBypass);
    let list = proxy.to_string_lossy();
    (ok && info.dwAccessType == WINHTTP_ACCESS_TYPE_NAMED_PROXY && !list.is_empty())
        .then(|| (list, bypass.to_string_lossy(), "WinHTTP"))
}

/// The user's Internet settings proxy (what a per-user agent's user has set).
fn user_proxy() -> Option<(String, String, &'static str)> {
    use windows_sys::Win32::Networking::WinHttp::{
        WINHTTP_CURRENT_USER_IE_PROXY_CONFIG, WinHttpGetIEProxyConfigForCurrentUser,
    };
    let mut config = WINHTTP_CURRENT_USER_IE_PROXY_CONFIG::default();
    // SAFETY: `config` is a valid out-structure; WinHTTP fills its string fields or leaves them null.
    let ok = unsafe { WinHttpGetIEProxyConfigForCurrentUser(&mut config) } != 0;
    let _auto_config = WinHttpString(config.lpszAutoConfigUrl);
    let proxy = WinHttpString(config.lpszProxy);
    let bypass = WinHttpString(config.lpszProxyBypass);
    let list = proxy.to_string_lossy();
    (ok && !list.is_empty()).then(|| (list, bypass.to_string_lossy(), "user Internet settings"))
}

fn delete_credential() -> Result<(), SystemError> {
    use windows_sys::Win32::Security::Credentials::CredDeleteW;
    let target_name = credential_target();
    let target = wide(OsStr::new(&target_name));
    // SAFETY: `target` is NUL-terminated.
    if unsafe { CredDeleteW(target.as_ptr(), CRED_TYPE_GENERIC, 0) } == 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(ERROR_NOT_FOUND as i32) {
            let what = format!("removing credential {target_name}");
            return Err(SystemError::from_io(what, err, USER_SECRET_HINT));
        }
    }
    Ok(())
}

fn read_machine_secret(storage_path: &Path) -> Result<Option<IpcSecret>, SystemError> {
    let path = storage_path.join(SECRET_FILE_NAME);
    let what = || path.display().to_string();
    let sealed = match crate::fs::read_no_follow(&path) {
        Ok(sealed) => sealed,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            let what = format!("reading {}", path.display());
            return Err(SystemError::from_io(what, err, MACHINE_SECRET_HINT));
        }
    };
    let plain = dpapi::unprotect(&sealed, SECRET_ENTROPY).map_err(|err| SystemError::Invalid {
        what: what(),
        reason: format!("DPAPI cannot decrypt it on this machine ({err})"),
    })?;
    parse_secret(&plain, what())
}

fn write_machine_secret(storage_path: &Path, secret: &IpcSecret) -> Result<(), SystemError> {
    let path = storage_path.join(SECRET_FILE_NAME);
    let what = || format!("writing {}", path.display());
    let sealed =
        dpapi::protect(secret.expose().as_bytes(), SECRET_ENTROPY, true).map_err(|source| {
            SystemError::Os {
                what: what(),
                source,
            }
        })?;
    // The folder's protected DACL (SYSTEM and Administrators) is inherited by the file.
    crate::fs::write_atomic(&path, &sealed)
        .map_err(|e| SystemError::from_io(what(), e, MACHINE_SECRET_HINT))
}

/// Ties a secret sealed at rest (config.json's credential) to that one purpose.
const AT_REST_ENTROPY: &[u8] = b"CMSAgent/at-rest";

/// DPAPI seals secrets at rest.
pub const SEALS_AT_REST: bool = true;

pub fn seal_at_rest(scope: SecretScope, plain: &[u8]) -> Result<Vec<u8>, SystemError> {
    let machine = scope == SecretScope::System;
    dpapi::protect(plain, AT_REST_ENTROPY, machine).map_err(|source| SystemError::Os {
        what: format!("sealing a secret with DPAPI ({} scope)", scope.as_str()),
        source,
    })
}

pub fn unseal_at_rest(sealed: &[u8]) -> Result<Vec<u8>, SystemError> {
    dpapi::unprotect(sealed, AT_REST_ENTROPY).map_err(|err| SystemError::Invalid {
        what: "a secret sealed with DPAPI".into(),
        reason: format!(
            "DPAPI cannot decrypt it here (sealed on another machine or by another user?): {err}"
        ),
    })
}

/// DPAPI with the machine key (any process on this machine that can read the blob can decrypt
/// it: the file's DACL decides who can) or the current user's (only that user can); no other
/// machine can either way.
mod dpapi {
    use std::io;

    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Cryptography::{
        CRYPT_INTEGER_BLOB, CRYPTPROTECT_LOCAL_MACHINE, CRYPTPROTECT_UI_FORBIDDEN,
        CryptProtectData, CryptUnprotectData,
    };

    /// A blob DPAPI allocated, freed (`LocalFree`) on drop.
    struct Output(CRYPT_INTEGER_BLOB);

    impl Output {
        fn empty() -> Self {
            Output(CRYPT_INTEGER_BLOB {
                cbData: 0,
                pbData: std::ptr::null_mut(),
            })
        }

        fn to_vec(&self) -> Vec<u8> {
            if self.0.pbData.is_null() {
                return Vec::new();
            }
            // SAFETY: DPAPI wrote `cbData` bytes at `pbData`, alive until drop.
            unsafe { std::slice::from_raw_parts(self.0.pbData, self.0.cbData as usize) }.to_vec()
        }
    }

    impl Drop for Output {
        fn drop(&mut self) {
            if !self.0.pbData.is_null() {
                // SAFETY: allocated by CryptProtectData/CryptUnprotectData, freed once here.
                unsafe { LocalFree(self.0.pbData.cast()) };
            }
        }
    }

    /// A read-only view of `bytes` in the form DPAPI takes (it never writes through it).
    fn input(bytes: &[u8]) -> CRYPT_INTEGER_BLOB {
        CRYPT_INTEGER_BLOB {
            cbData: bytes.len() as u32,
            pbData: bytes.as_ptr().cast_mut(),
        }
    }

    /// Runs one DPAPI call that writes its result into the blob it is given.
    fn fill(call: impl FnOnce(&mut CRYPT_INTEGER_BLOB) -> i32) -> io::Result<Vec<u8>> {
        let mut out = Output::empty();
        if call(&mut out.0) == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(out.to_vec())
    }

    /// Seals `plain` with the machine key when `machine`, else with the current user's.
    pub fn protect(plain: &[u8], entropy: &[u8], machine: bool) -> io::Result<Vec<u8>> {
        let (data, entropy) = (input(plain), input(entropy));
        let scope = if machine {
            CRYPTPROTECT_LOCAL_MACHINE
        } else {
            0
        };
        fill(|out| {
            // SAFETY: the input blobs point at live slices for the call; `out` receives a
            // LocalAlloc'ed blob freed by `Output`'s Drop.
            unsafe {
                CryptProtectData(
                    &data,
                    std::ptr::null(),
                    &entropy,
                    std::ptr::null(),
                    std::ptr::null(),
                    scope | CRYPTPROTECT_UI_FORBIDDEN,
                    out,
                )
            }
        })
    }

    pub fn unprotect(sealed: &[u8], entropy: &[u8]) -> io::Result<Vec<u8>> {
        let (data, entropy) = (input(sealed), input(entropy));
        fill(|out| {
            // SAFETY: as in `protect`; the description out pointer is not requested.
            unsafe {
                CryptUnprotectData(
                    &data,
                    std::ptr::null_mut(),
                    &entropy,
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    out,
                )
            }
        })
    }
}

/// Whether this process runs under Wine, which does not enforce a few Windows rules (first
/// pipe instance, delete-pending files, mandatory locks); tests of those rules skip themselves
/// there.
pub fn running_under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    let ntdll = wide(OsStr::new("ntdll.dll"));
    // SAFETY: NUL-terminated module name; ntdll is loaded in every process.
    let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
    if module.is_null() {
        return false;
    }
    // SAFETY: valid module handle and a NUL-terminated export name.
    unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }.is_some()
}

pub use data_folder::secure_data_dir;

/// The elevated agent's data folder (docs/CONTRACT.md, "Files on disk"): created with its
/// protected DACL in the `CreateDirectoryW` call; an existing one walked without following
/// reparse points, which are removed; what SYSTEM, Administrators or this process's own user
/// do not own is taken over through a handle opened without following links.
mod data_folder {
    use std::fs::{self, File, Metadata, OpenOptions};
    use std::io;
    use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
    use std::path::Path;

    use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, HANDLE, LUID, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, GetSecurityInfo, SE_FILE_OBJECT, SetSecurityInfo,
    };
    use windows_sys::Win32::Security::{
        ACL, AdjustTokenPrivileges, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl,
        GetSecurityDescriptorOwner, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW,
        OWNER_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
        PSID, SE_PRIVILEGE_ENABLED, SE_RESTORE_NAME, SE_TAKE_OWNERSHIP_NAME, SECURITY_ATTRIBUTES,
        TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        CreateDirectoryW, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT,
        FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OPEN_REPARSE_POINT, FILE_SHARE_DELETE,
        FILE_SHARE_READ, FILE_SHARE_WRITE, READ_CONTROL, WRITE_DAC, WRITE_OWNER,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use super::super::data_dir::{EntryKind, Verdict, is_admin_owner, refused, verdict};
    use super::super::{DataDirChange, DataDirReport};
    use super::{
        STORAGE_SDDL, SecurityDescriptor, from_wide_ptr, get_user_sid_string, running_under_wine,
        wide, win32_result,
    };

    /// How deep the tree is walked; a deeper tree is refused (the agent's is 2 deep).
    const MAX_DEPTH: usize = 16;

    pub fn secure_data_dir(path: &Path, machine_wide: bool) -> io::Result<DataDirReport> {
        let mut report = DataDirReport::default();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if is_reparse_point(&meta) => {
                remove_link(path, &meta)?;
                report.changes.push(DataDirChange::Removed {
                    path: path.to_path_buf(),
                    what: "a junction or link",
                });
                report.created = create_protected_dir(path, machine_wide)?;
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(io::Error::other(format!(
                    "{} is a file, not a folder",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                report.created = create_protected_dir(path, machine_wide)?;
            }
            Err(err) => return Err(err),
        }
        if report.created {
            // Made by this call with this process's owner and DACL, and empty: nothing to ask
            // (Wine, where ownership is not real, then never stops a fresh start).
            return Ok(report);
        }
        let own = get_user_sid_string().ok();
        let top = fs::symlink_metadata(path)?;
        secure_entry(path, &top, own.as_deref(), &mut report)?;
        sweep(path, own.as_deref(), 0, &mut report)?;
        Ok(report)
    }

    /// `CreateDirectoryW` with the storage DACL (machine-wide) in its security attributes, so
    /// the folder is never reachable unprotected; `false` when it appeared meanwhile.
    fn create_protected_dir(path: &Path, machine_wide: bool) -> io::Result<bool> {
        let descriptor = machine_wide
            .then(|| SecurityDescriptor::from_sddl(STORAGE_SDDL))
            .transpose()?;
        let attributes = SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: descriptor
                .as_ref()
                .map_or(std::ptr::null_mut(), SecurityDescriptor::as_ptr),
            bInheritHandle: 0,
        };
        let name = wide(path.as_os_str());
        // SAFETY: `name` is NUL-terminated; `attributes` and the descriptor it points to (or
        // null: the default for the per-user folder) outlive the call.
        if unsafe { CreateDirectoryW(name.as_ptr(), &attributes) } != 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(code) if code == ERROR_ALREADY_EXISTS as i32 => Ok(false),
            _ => Err(err),
        }
    }

    /// Applies the rule of `data_dir` to every entry below `dir`, parents before children.
    fn sweep(
        dir: &Path,
        own: Option<&str>,
        depth: usize,
        report: &mut DataDirReport,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{} is nested more than {MAX_DEPTH} folders deep",
                dir.display()
            )));
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            // The directory listing's own data: a link is described, not followed.
            let meta = entry.metadata()?;
            let path = entry.path();
            if secure_entry(&path, &meta, own, report)? && !is_reparse_point(&meta) {
                sweep(&path, own, depth + 1, report)?;
            }
        }
        Ok(())
    }

    /// One entry: a link is removed, someone else's folder or file taken over; `true` when it
    /// is a folder that stays.
    fn secure_entry(
        path: &Path,
        meta: &Metadata,
        own: Option<&str>,
        report: &mut DataDirReport,
    ) -> io::Result<bool> {
        let kind = if is_reparse_point(meta) {
            EntryKind::Link
        } else if meta.file_attributes() & FILE_ATTRIBUTE_DIRECTORY != 0 {
            EntryKind::Folder
        } else {
            EntryKind::File { names: 1 }
        };
        let owner = match kind {
            EntryKind::Link => None,
            _ => owner_of(path).map(Some).or_else(|err| {
                if running_under_wine() {
                    // Wine keeps no owners; there is nobody to take the folder from.
                    tracing::warn!(path = %path.display(), error = %err, "owner unknown under Wine; used as it is");
                    Ok(None)
                } else {
                    Err(refused(path, "an unknown owner", err))
                }
            })?,
        };
        let admin_owned = owner.as_deref().is_none_or(|sid| is_admin_owner(sid, own));
        match verdict(kind, admin_owned) {
            Verdict::Keep => {}
            Verdict::Remove(what) => {
                remove_link(path, meta)?;
                report.changes.push(DataDirChange::Removed {
                    path: path.to_path_buf(),
                    what,
                });
                return Ok(false);
            }
            Verdict::TakeOver => {
                let previous_owner = owner.unwrap_or_default();
                match take_over(path) {
                    Ok(()) => report.changes.push(DataDirChange::TakenOver {
                        path: path.to_path_buf(),
                        previous_owner,
                    }),
                    // Wine enforces no owners or DACLs: nothing to take from anyone there.
                    Err(err) if running_under_wine() => {
                        tracing::warn!(path = %path.display(), owner = %previous_owner, error = %err, "cannot take over under Wine; used as it is");
                    }
                    Err(err) => return Err(refused(path, &previous_owner, err)),
                }
            }
        }
        Ok(kind == EntryKind::Folder)
    }

    fn is_reparse_point(meta: &Metadata) -> bool {
        meta.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0
    }

    /// Removes a junction, symbolic link or other reparse point itself: `RemoveDirectoryW` for
    /// a folder's, `DeleteFileW` for a file's; neither follows it.
    fn remove_link(path: &Path, meta: &Metadata) -> io::Result<()> {
        if meta.file_attributes() & FILE_ATTRIBUTE_DIRECTORY != 0 {
            fs::remove_dir(path)
        } else {
            fs::remove_file(path)
        }
    }

    /// Opens `path` itself (never what a reparse point names) for `access`; folders too.
    fn open_no_follow(path: &Path, access: u32) -> io::Result<File> {
        let file = OpenOptions::new()
            .access_mode(access)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)?;
        if is_reparse_point(&file.metadata()?) {
            return Err(io::Error::other("it became a link while being checked"));
        }
        Ok(file)
    }

    /// The owner's SID of `path`, read through a handle to the entry itself.
    fn owner_of(path: &Path) -> io::Result<String> {
        let file = open_no_follow(path, READ_CONTROL)?;
        let mut owner: PSID = std::ptr::null_mut();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `file` is an open handle with READ_CONTROL; `owner` will point into
        // `descriptor`, a LocalAlloc'ed buffer freed by the guard below after its last use.
        let code = unsafe {
            GetSecurityInfo(
                file.as_raw_handle(),
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION,
                &mut owner,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut descriptor,
            )
        };
        win32_result(code)?;
        let descriptor = SecurityDescriptor(descriptor);
        let sid = sid_string(owner);
        drop(descriptor);
        sid
    }

    /// Makes Administrators the owner of `path` and gives it the storage DACL (protected),
    /// through one handle to the entry itself; the take-ownership and restore privileges are
    /// enabled for the call, as someone else's DACL may grant an administrator nothing.
    fn take_over(path: &Path) -> io::Result<()> {
        let _privileges = [SE_TAKE_OWNERSHIP_NAME, SE_RESTORE_NAME]
            .map(|name| EnabledPrivilege::enable(name).ok());
        let file = open_no_follow(path, READ_CONTROL | WRITE_DAC | WRITE_OWNER)?;
        let descriptor = SecurityDescriptor::from_sddl(&format!("O:BA{STORAGE_SDDL}"))?;
        let (mut owner, mut dacl): (PSID, *mut ACL) = (std::ptr::null_mut(), std::ptr::null_mut());
        let (mut present, mut defaulted) = (0, 0);
        // SAFETY: `descriptor` is valid; the out pointers live on this stack frame and point
        // into `descriptor`, which outlives their use below.
        let ok = unsafe {
            GetSecurityDescriptorOwner(descriptor.as_ptr(), &mut owner, &mut defaulted) != 0
                && GetSecurityDescriptorDacl(
                    descriptor.as_ptr(),
                    &mut present,
                    &mut dacl,
                    &mut defaulted,
                ) != 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `file` is an open handle with WRITE_OWNER and WRITE_DAC; `owner` and `dacl`
        // are valid (above); group and SACL are not changed.
        let code = unsafe {
            SetSecurityInfo(
                file.as_raw_handle(),
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION
                    | DACL_SECURITY_INFORMATION
                    | PROTECTED_DACL_SECURITY_INFORMATION,
                owner,
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            )
        };
        win32_result(code)
    }

    /// A privilege of this process's token enabled by [`EnabledPrivilege::enable`] and
    /// disabled again on drop (unless it was enabled before).
    struct EnabledPrivilege {
        token: OwnedHandle,
        luid: LUID,
        was_enabled: bool,
    }

    impl EnabledPrivilege {
        fn enable(name: windows_sys::core::PCWSTR) -> io::Result<Self> {
            let mut raw: HANDLE = std::ptr::null_mut();
            let access = TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY;
            // SAFETY: GetCurrentProcess returns a pseudo-handle; `raw` is a valid out pointer.
            if unsafe { OpenProcessToken(GetCurrentProcess(), access, &mut raw) } == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: OpenProcessToken succeeded, so `raw` is an open handle we now own.
            let token = unsafe { OwnedHandle::from_raw_handle(raw) };
            let mut luid = LUID {
                LowPart: 0,
                HighPart: 0,
            };
            // SAFETY: `name` is a NUL-terminated constant; `luid` is a valid out pointer.
            if unsafe { LookupPrivilegeValueW(std::ptr::null(), name, &mut luid) } == 0 {
                return Err(io::Error::last_os_error());
            }
            let previous = adjust(&token, luid, SE_PRIVILEGE_ENABLED)?;
            // An unchanged privilege (already enabled, or not held) reports no previous state.
            let was_enabled = previous.PrivilegeCount == 0;
            Ok(EnabledPrivilege {
                token,
                luid,
                was_enabled,
            })
        }
    }

    impl Drop for EnabledPrivilege {
        fn drop(&mut self) {
            if !self.was_enabled {
                let _ = adjust(&self.token, self.luid, 0);
            }
        }
    }

    /// Sets one privilege's attributes; returns what changed (its state before).
    fn adjust(token: &OwnedHandle, luid: LUID, attributes: u32) -> io::Result<TOKEN_PRIVILEGES> {
        let new = TOKEN_PRIVILEGES {
            PrivilegeCount: 1,
            Privileges: [LUID_AND_ATTRIBUTES {
                Luid: luid,
                Attributes: attributes,
            }],
        };
        let mut previous = TOKEN_PRIVILEGES::default();
        let mut returned = 0u32;
        // SAFETY: `token` is open with TOKEN_ADJUST_PRIVILEGES; `new` and `previous` are
        // TOKEN_PRIVILEGES with room for one entry, the size passed.
        let ok = unsafe {
            AdjustTokenPrivileges(
                token.as_raw_handle(),
                0,
                &new,
                size_of::<TOKEN_PRIVILEGES>() as u32,
                &mut previous,
                &mut returned,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(previous)
    }

    /// `S-1-5-...` for `sid`.
    pub(super) fn sid_string(sid: PSID) -> io::Result<String> {
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: the caller passes a valid SID; `text` receives a LocalAlloc'ed string.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the conversion succeeded, so `text` is a NUL-terminated string.
        let sid_string = unsafe { from_wide_ptr(text) };
        // SAFETY: `text` was allocated by ConvertSidToStringSidW and is freed once.
        unsafe { LocalFree(text.cast()) };
        Ok(sid_string)
    }
}

// --- No SYSTEM code from a writable place; the package pinned while it is checked (issue 22) ---

pub fn restrict_dll_search() -> io::Result<()> {
    use windows_sys::Win32::System::LibraryLoader::{
        LOAD_LIBRARY_SEARCH_SYSTEM32, SetDefaultDllDirectories,
    };
    // SAFETY: takes flags only; it changes where this process's later LoadLibrary calls look.
    if unsafe { SetDefaultDllDirectories(LOAD_LIBRARY_SEARCH_SYSTEM32) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn open_exclusive_read(path: &Path) -> io::Result<File> {
    use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT;
    // Read sharing only: no writer, no rename, no delete while it is open. A link opened as
    // itself is not a regular file, which the caller refuses.
    OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
}

pub fn pinned_path(_file: &File, path: &Path) -> PathBuf {
    path.to_path_buf() // the open file's share mode keeps `path` naming it
}

pub fn delete_running_exe() -> io::Result<bool> {
    Ok(false) // a running exe cannot be deleted; the next agent start clears `updates/`
}

/// The machine's policy for the agent, as Group Policy writes it (under `HKLM`).
const POLICY_KEY: &str = r"SOFTWARE\Policies\CMSAgent";
/// The key above it, watched (with its subtree) because the agent's own may not exist yet.
const POLICIES_KEY: &str = r"SOFTWARE\Policies";
pub const POLICY_PLACE: &str = r"HKLM\SOFTWARE\Policies\CMSAgent";

/// An open registry key, closed when dropped.
struct RegKey(HKEY);

impl RegKey {
    /// `HKLM\<path>` (64-bit view) opened with `access`; `None` when it does not exist.
    fn open_machine(path: &str, access: u32) -> io::Result<Option<RegKey>> {
        use windows_sys::Win32::System::Registry::{KEY_WOW64_64KEY, RegOpenKeyExW};
        let name = wide(OsStr::new(path));
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `key` receives the handle, closed by `RegKey`.
        let code = unsafe {
            RegOpenKeyExW(
                HKEY_LOCAL_MACHINE,
                name.as_ptr(),
                0,
                access | KEY_WOW64_64KEY,
                &mut key,
            )
        };
        match win32_result(code) {
            Ok(()) => Ok(Some(RegKey(key))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `HKLM\<path>` (64-bit view), created when missing, opened with `access`.
    fn create_machine(path: &str, access: u32) -> io::Result<RegKey> {
        use windows_sys::Win32::System::Registry::{
            KEY_WOW64_64KEY, REG_OPTION_NON_VOLATILE, RegCreateKeyExW,
        };
        let name = wide(OsStr::new(path));
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; no class, default security, no disposition out.
        let code = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                name.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                access | KEY_WOW64_64KEY,
                std::ptr::null(),
                &mut key,
                std::ptr::null_mut(),
            )
        };
        win32_result(code).map(|()| RegKey(key))
    }

    /// The value at `index` as (name, text): strings as they are, DWORDs in decimal, other
    /// types as `None`; `Ok(None)` past the last value.
    fn value_at(&self, index: u32) -> io::Result<Option<(String, Option<String>)>> {
        use windows_sys::Win32::Foundation::ERROR_NO_MORE_ITEMS;
        use windows_sys::Win32::System::Registry::{REG_DWORD, REG_EXPAND_SZ, RegEnumValueW};
        let mut name = vec![0u16; 256];
        let mut name_len = name.len() as u32;
        let mut data = vec![0u8; 8192];
        let mut data_len = data.len() as u32;
        let mut kind = 0u32;
        // SAFETY: the buffers hold the lengths passed; the key handle is open.
        let code = unsafe {
            RegEnumValueW(
                self.0,
                index,
                name.as_mut_ptr(),
                &mut name_len,
                std::ptr::null(),
                &mut kind,
                data.as_mut_ptr(),
                &mut data_len,
            )
        };
        if code == ERROR_NO_MORE_ITEMS {
            return Ok(None);
        }
        win32_result(code)?;
        let name = String::from_utf16_lossy(&name[..name_len as usize]);
        let data = &data[..(data_len as usize).min(data.len())];
        let text = match kind {
            REG_SZ | REG_EXPAND_SZ => {
                let units: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Some(
                    String::from_utf16_lossy(&units)
                        .trim_end_matches('\0')
                        .to_owned(),
                )
            }
            REG_DWORD if data.len() == 4 => {
                Some(u32::from_le_bytes([data[0], data[1], data[2], data[3]]).to_string())
            }
            _ => None,
        };
        Ok(Some((name, text)))
    }
}

impl Drop for RegKey {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by RegOpenKeyExW/RegCreateKeyExW and is closed once.
        unsafe { windows_sys::Win32::System::Registry::RegCloseKey(self.0) };
    }
}

pub fn read_policy() -> io::Result<Vec<(String, Option<String>)>> {
    use windows_sys::Win32::System::Registry::KEY_READ;
    let Some(key) = RegKey::open_machine(POLICY_KEY, KEY_READ)? else {
        return Ok(Vec::new());
    };
    let mut values = Vec::new();
    for index in 0.. {
        match key.value_at(index)? {
            Some(value) => values.push(value),
            None => break,
        }
    }
    Ok(values)
}

pub fn wait_policy_change() -> io::Result<bool> {
    use windows_sys::Win32::System::Registry::{
        KEY_NOTIFY, REG_NOTIFY_CHANGE_LAST_SET, REG_NOTIFY_CHANGE_NAME, RegNotifyChangeKeyValue,
    };
    // `SOFTWARE\Policies` exists on Windows; a fresh Wine prefix may lack it.
    let key = RegKey::create_machine(POLICIES_KEY, KEY_NOTIFY)?;
    // SAFETY: the key is open with KEY_NOTIFY; synchronous: no event handle.
    let code = unsafe {
        RegNotifyChangeKeyValue(
            key.0,
            1,
            REG_NOTIFY_CHANGE_NAME | REG_NOTIFY_CHANGE_LAST_SET,
            std::ptr::null_mut(),
            0,
        )
    };
    win32_result(code).map(|()| true)
}

#[cfg(test)]
mod tests {
    //! Run under Wine (`cargo xtask wine-test`), which runs programs as an administrator, so
    //! both the HKLM and the HKCU paths are reachable; functions take `machine_wide` explicitly.

    use super::*;

    #[test]
    fn an_exe_in_a_folder_its_user_owns_may_not_start_as_a_service() {
        if running_under_wine() {
            eprintln!("SKIPPED under Wine: it keeps no owners or DACLs on files");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cms_agent.exe");
        std::fs::write(&exe, b"MZ").unwrap();
        let why = writable_by_standard_users(&exe).unwrap();
        assert!(why.is_some(), "a user's temp folder passed as safe");
    }
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetNamedSecurityInfoW, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::System::Registry::{RRF_RT_REG_SZ, RegGetValueW};

    /// The command stored in the `Run` value, `None` when there is none.
    fn read_autostart(run: RunKey) -> Result<Option<String>, SystemError> {
        let root = run.root();
        let key = wide(OsStr::new(RUN_KEY));
        let name = wide(OsStr::new(AUTOSTART_NAME));
        let mut buffer = vec![0u16; 4096];
        let mut bytes = (buffer.len() * 2) as u32;
        // SAFETY: strings are NUL-terminated; `buffer` holds `bytes` bytes.
        let code = unsafe {
            RegGetValueW(
                root,
                key.as_ptr(),
                name.as_ptr(),
                RRF_RT_REG_SZ,
                std::ptr::null_mut(),
                buffer.as_mut_ptr().cast::<c_void>(),
                &mut bytes,
            )
        };
        match win32_result(code) {
            Ok(()) => {
                let units = (bytes as usize / 2).min(buffer.len());
                let text = String::from_utf16_lossy(&buffer[..units]);
                Ok(Some(text.trim_end_matches('\0').to_owned()))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(SystemError::from_io(
                format!("reading {}", run.place()),
                err,
                AUTOSTART_HINT,
            )),
        }
    }

    /// The DACL of `path` as SDDL, read back from the file system.
    fn dacl_sddl(path: &Path) -> String {
        let name = wide(path.as_os_str());
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; only the descriptor out pointer is requested.
        let code = unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut descriptor,
            )
        };
        assert_eq!(code, ERROR_SUCCESS, "GetNamedSecurityInfoW");
        let descriptor = SecurityDescriptor(descriptor);
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: `descriptor` is valid; `text` receives a LocalAlloc'ed string.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(
                descriptor.as_ptr(),
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                std::ptr::null_mut(),
            )
        };
        assert_ne!(
            ok, 0,
            "ConvertSecurityDescriptorToStringSecurityDescriptorW"
        );
        // SAFETY: the conversion succeeded, so `text` is a NUL-terminated string we free once.
        let sddl = unsafe { from_wide_ptr(text) };
        // SAFETY: allocated by the conversion above, freed once.
        unsafe { LocalFree(text.cast()) };
        sddl
    }

    #[test]
    fn the_users_run_value_is_written_read_back_and_removed() {
        let exe = Path::new(r"C:\Program Files\CMSAgent\cms_agent.exe");
        let args = [
            OsString::from("--data-dir"),
            OsString::from(r"C:\data dir\"),
        ];
        let place = register_autostart(exe, &args, false).unwrap();
        assert!(place.starts_with("HKCU"), "{place}");
        let stored = read_autostart(RunKey::User).unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(r#""C:\Program Files\CMSAgent\cms_agent.exe" "--data-dir" "C:\data dir\\""#)
        );
        assert_eq!(unregister_autostart(false).unwrap(), Some(place));
        assert_eq!(read_autostart(RunKey::User).unwrap(), None);
        assert_eq!(
            unregister_autostart(false).unwrap(),
            None,
            "removing twice is fine"
        );
    }

    #[test]
    fn the_machine_wide_run_value_of_an_older_version_is_removed() {
        let legacy = RunKey::LegacyMachine
            .write(r#""C:\old\cms_agent.exe""#)
            .unwrap();
        assert!(legacy.starts_with("HKLM"), "{legacy}");
        // No service CMSAgent in this prefix: only the old value goes.
        assert_eq!(unregister_autostart(true).unwrap(), Some(legacy));
        assert_eq!(read_autostart(RunKey::LegacyMachine).unwrap(), None);
        assert_eq!(unregister_autostart(true).unwrap(), None);
    }

    #[test]
    fn a_quote_in_an_argument_is_refused() {
        let err = register_autostart(Path::new("C:\\a.exe"), &["x\"y".into()], false).unwrap_err();
        assert!(matches!(err, SystemError::Invalid { .. }), "{err}");
    }

    #[test]
    fn ipc_secrets_are_created_read_back_and_removed_in_both_scopes() {
        let storage = tempfile::tempdir().unwrap();
        for scope in [SecretScope::User, SecretScope::System] {
            let secret = IpcSecret::generate().unwrap();
            write_ipc_secret(scope, storage.path(), &secret).unwrap();
            assert_eq!(
                read_ipc_secret(scope, storage.path()).unwrap(),
                Some(secret.clone())
            );
            let newer = super::super::manage_ipc_secret(
                super::super::SecretAction::Create,
                scope,
                storage.path(),
            )
            .unwrap()
            .unwrap();
            assert_ne!(newer, secret);
            assert_eq!(read_ipc_secret(scope, storage.path()).unwrap(), Some(newer));
            delete_ipc_secret(scope, storage.path()).unwrap();
            assert_eq!(read_ipc_secret(scope, storage.path()).unwrap(), None);
            delete_ipc_secret(scope, storage.path()).unwrap(); // twice is fine
        }
    }

    #[test]
    fn the_machine_wide_secret_file_is_sealed_with_dpapi() {
        let storage = tempfile::tempdir().unwrap();
        let secret = IpcSecret::generate().unwrap();
        write_ipc_secret(SecretScope::System, storage.path(), &secret).unwrap();
        let file = std::fs::read(storage.path().join(SECRET_FILE_NAME)).unwrap();
        let text = String::from_utf8_lossy(&file);
        assert!(
            !text.contains(secret.expose()),
            "the secret is stored in clear"
        );
        std::fs::write(storage.path().join(SECRET_FILE_NAME), b"not a DPAPI blob").unwrap();
        let err = read_ipc_secret(SecretScope::System, storage.path()).unwrap_err();
        assert!(matches!(err, SystemError::Invalid { .. }), "{err}");
    }

    #[test]
    fn secrets_at_rest_are_sealed_in_both_scopes_and_opened_again() {
        let plain = b"0123456789abcdef0123456789abcdef";
        for scope in [SecretScope::User, SecretScope::System] {
            let sealed = seal_at_rest(scope, plain).unwrap();
            assert!(
                !sealed.windows(plain.len()).any(|w| w == plain),
                "{scope:?}: the secret is in the blob"
            );
            assert_eq!(unseal_at_rest(&sealed).unwrap(), plain, "{scope:?}");
            let other = dpapi::unprotect(&sealed, SECRET_ENTROPY);
            assert!(other.is_err(), "{scope:?}: opened for another purpose");
        }
        let err = unseal_at_rest(b"not a DPAPI blob").unwrap_err();
        assert!(matches!(err, SystemError::Invalid { .. }), "{err}");
    }

    #[test]
    fn protected_dacl_is_applied_to_the_storage_folder() {
        let dir = tempfile::tempdir().unwrap();
        apply_protected_dacl(dir.path()).unwrap();
        set_directory_acls(dir.path(), true).unwrap();
        let sddl = dacl_sddl(dir.path());
        if running_under_wine() {
            // Wine 8 accepts the call but keeps no security descriptor for the folder (no
            // `user.wine.sd` xattr is written); it reads back a DACL made from the Unix mode.
            println!("under Wine: applied, read back as {sddl}");
            return;
        }
        assert!(sddl.starts_with("D:P"), "inheritance must be off: {sddl}");
        assert!(sddl.contains(";;;SY)") && sddl.contains(";;;BA)"), "{sddl}");
        assert_eq!(
            sddl.matches("(A;").count(),
            2,
            "only SYSTEM and Administrators: {sddl}"
        );
    }

    #[test]
    fn the_user_sid_looks_like_a_sid() {
        let sid = get_user_sid_string().unwrap();
        assert!(sid.starts_with("S-1-"), "{sid}");
    }
}

#[cfg(test)]
mod pinning_tests {
    //! Run under Wine (`cargo xtask wine-test`), which enforces share modes.

    use super::super::{open_exclusive_read, pinned_path};
    use std::fs;
    use std::io::Read;

    #[test]
    fn an_exclusively_read_file_cannot_be_written_renamed_over_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("package.zip");
        fs::write(&path, b"checked").unwrap();
        let file = open_exclusive_read(&path).unwrap();
        assert!(fs::OpenOptions::new().write(true).open(&path).is_err());
        let other = dir.path().join("other");
        fs::write(&other, b"planted").unwrap();
        assert!(fs::rename(&other, &path).is_err());
        assert!(fs::remove_file(&path).is_err());
        let mut read = Vec::new();
        fs::File::open(pinned_path(&file, &path))
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, b"checked");
        drop(file);
        fs::remove_file(&path).unwrap();
    }
}
