//! Windows implementation of the `system` API, through `windows-sys`: elevation, the storage
//! DACL, `LockFileEx`, the `Run` key, Credential Manager and the user's SID.
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
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::Credentials::{
    CRED_PERSIST_LOCAL_MACHINE, CRED_TYPE_GENERIC, CREDENTIALW, CredFree, CredReadW, CredWriteW,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, GetTokenInformation,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, TOKEN_ELEVATION, TOKEN_QUERY,
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
    token_is_elevated().unwrap_or(false)
}

fn open_process_token() -> io::Result<OwnedHandle> {
    let mut raw: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `raw` is a valid out pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut raw) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: OpenProcessToken succeeded, so `raw` is an open handle we now own.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

fn token_is_elevated() -> io::Result<bool> {
    let token = open_process_token()?;
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

pub fn default_data_dir(is_admin: bool) -> Option<PathBuf> {
    let base = if is_admin {
        "PROGRAMDATA"
    } else {
        "LOCALAPPDATA"
    };
    let root = std::env::var_os(base).filter(|v| !v.is_empty())?;
    Some(Path::new(&root).join("CMSAgent"))
}

pub fn set_directory_acls(path: &Path) -> io::Result<()> {
    if !is_running_as_admin() {
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

pub fn create_private_file(path: &Path) -> io::Result<File> {
    File::create(path) // inherits the storage folder's DACL
}

pub fn installed_path(exe: &Path) -> PathBuf {
    exe.to_path_buf() // the path the exe was started from: the install path
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
    let token = open_process_token().map_err(os)?;
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
        return Err(os(io::Error::last_os_error()));
    }
    // SAFETY: the call succeeded, so the buffer starts with a TOKEN_USER whose SID pointer
    // points into the same buffer, which outlives this use.
    let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is valid (above); `text` receives a LocalAlloc'ed string.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(os(io::Error::last_os_error()));
    }
    // SAFETY: the conversion succeeded, so `text` is a NUL-terminated string.
    let sid_string = unsafe { from_wide_ptr(text) };
    // SAFETY: `text` was allocated by ConvertSidToStringSidW and is freed once.
    unsafe { LocalFree(text.cast()) };
    Ok(sid_string)
}

/// `HKLM`/`HKCU` `...\CurrentVersion\Run`: where Windows finds programs to start at logon.
const RUN_KEY: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";
/// Advice when the registry refuses.
const AUTOSTART_HINT: &str = "run elevated (as administrator) to change the machine-wide entry (HKLM), or without elevation for your own (HKCU)";

fn run_root(is_admin: bool) -> (HKEY, &'static str) {
    if is_admin {
        (HKEY_LOCAL_MACHINE, "HKLM")
    } else {
        (HKEY_CURRENT_USER, "HKCU")
    }
}

fn run_value_place(is_admin: bool) -> String {
    format!(r"{}\{RUN_KEY}\{AUTOSTART_NAME}", run_root(is_admin).1)
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
    is_admin: bool,
) -> Result<String, SystemError> {
    let command = command_line(exe_path, args)?;
    let data = wide(OsStr::new(&command));
    let (root, _) = run_root(is_admin);
    let key = wide(OsStr::new(RUN_KEY));
    let name = wide(OsStr::new(AUTOSTART_NAME));
    let place = run_value_place(is_admin);
    // SAFETY: all strings are NUL-terminated; `data` holds `data.len() * 2` bytes of REG_SZ
    // including its terminator, as the API requires.
    let code = unsafe {
        RegSetKeyValueW(
            root,
            key.as_ptr(),
            name.as_ptr(),
            REG_SZ,
            data.as_ptr().cast::<c_void>(),
            (data.len() * 2) as u32,
        )
    };
    win32_result(code)
        .map_err(|e| SystemError::from_io(format!("writing {place}"), e, AUTOSTART_HINT))?;
    Ok(place)
}

pub fn unregister_autostart(is_admin: bool) -> Result<Option<String>, SystemError> {
    let (root, _) = run_root(is_admin);
    let key = wide(OsStr::new(RUN_KEY));
    let name = wide(OsStr::new(AUTOSTART_NAME));
    let place = run_value_place(is_admin);
    // SAFETY: both strings are NUL-terminated; `root` is a predefined key.
    let code = unsafe { RegDeleteKeyValueW(root, key.as_ptr(), name.as_ptr()) };
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

/// Name of the generic credential holding the IPC secret of `scope`.
fn credential_target(scope: SecretScope) -> String {
    format!("{AUTOSTART_NAME}/ipc/{}", scope.as_str())
}

/// Frees a credential returned by `CredReadW` on every path.
struct CredentialGuard(*mut CREDENTIALW);

impl Drop for CredentialGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful CredReadW and is freed once, here.
        unsafe { CredFree(self.0.cast::<c_void>()) };
    }
}

pub fn read_ipc_secret(
    scope: SecretScope,
    _storage_path: &Path,
) -> Result<Option<IpcSecret>, SystemError> {
    let target_name = credential_target(scope);
    let target = wide(OsStr::new(&target_name));
    let mut credential: *mut CREDENTIALW = std::ptr::null_mut();
    // SAFETY: `target` is NUL-terminated; `credential` receives a buffer we free with CredFree.
    if unsafe { CredReadW(target.as_ptr(), CRED_TYPE_GENERIC, 0, &mut credential) } == 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(ERROR_NOT_FOUND as i32) {
            return Ok(None);
        }
        let what = format!("reading credential {target_name}");
        return Err(SystemError::from_io(
            what,
            err,
            "run as the user the agent runs as",
        ));
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
    let parsed = std::str::from_utf8(bytes).ok().and_then(IpcSecret::parse);
    parsed.map(Some).ok_or_else(|| SystemError::Invalid {
        what: format!("credential {target_name}"),
        reason: "it does not hold a 64-digit hex secret".into(),
    })
}

pub fn write_ipc_secret(
    scope: SecretScope,
    _storage_path: &Path,
    secret: &IpcSecret,
) -> Result<(), SystemError> {
    let target_name = credential_target(scope);
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
        let hint = "run as the user the agent runs as";
        return Err(SystemError::from_io(what, io::Error::last_os_error(), hint));
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

#[cfg(test)]
mod tests {
    //! Run under Wine (`cargo xtask wine-test`), which runs programs as an administrator, so
    //! both the HKLM and the HKCU paths are reachable; functions take `is_admin` explicitly.

    use super::*;
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetNamedSecurityInfoW, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::System::Registry::{RRF_RT_REG_SZ, RegGetValueW};

    /// The command stored in the `Run` value, `None` when there is none.
    fn read_autostart(is_admin: bool) -> Result<Option<String>, SystemError> {
        let (root, _) = run_root(is_admin);
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
                format!("reading {}", run_value_place(is_admin)),
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
    fn run_value_is_written_read_back_and_removed_for_machine_and_user() {
        let exe = Path::new(r"C:\Program Files\CMSAgent\cms_agent.exe");
        let args = [
            OsString::from("--data-dir"),
            OsString::from(r"C:\data dir\"),
        ];
        for is_admin in [true, false] {
            let place = register_autostart(exe, &args, is_admin).unwrap();
            assert!(
                place.starts_with(if is_admin { "HKLM" } else { "HKCU" }),
                "{place}"
            );
            let stored = read_autostart(is_admin).unwrap();
            assert_eq!(
                stored.as_deref(),
                Some(r#""C:\Program Files\CMSAgent\cms_agent.exe" "--data-dir" "C:\data dir\\""#)
            );
            assert_eq!(unregister_autostart(is_admin).unwrap(), Some(place));
            assert_eq!(read_autostart(is_admin).unwrap(), None);
            assert_eq!(
                unregister_autostart(is_admin).unwrap(),
                None,
                "removing twice is fine"
            );
        }
    }

    #[test]
    fn a_quote_in_an_argument_is_refused() {
        let err = register_autostart(Path::new("C:\\a.exe"), &["x\"y".into()], false).unwrap_err();
        assert!(matches!(err, SystemError::Invalid { .. }), "{err}");
    }

    #[test]
    fn ipc_secret_credential_is_created_and_read_back() {
        let storage = Path::new(".");
        for scope in [SecretScope::User, SecretScope::System] {
            let secret = IpcSecret::generate().unwrap();
            write_ipc_secret(scope, storage, &secret).unwrap();
            assert_eq!(
                read_ipc_secret(scope, storage).unwrap(),
                Some(secret.clone())
            );
            let newer =
                super::super::manage_ipc_secret(super::super::SecretAction::Create, scope, storage)
                    .unwrap()
                    .unwrap();
            assert_ne!(newer, secret);
            assert_eq!(read_ipc_secret(scope, storage).unwrap(), Some(newer));
        }
    }

    #[test]
    fn protected_dacl_is_applied_to_the_storage_folder() {
        let dir = tempfile::tempdir().unwrap();
        apply_protected_dacl(dir.path()).unwrap();
        set_directory_acls(dir.path()).unwrap();
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
