//! Windows transport: a message-mode named pipe whose DACL admits only the owner, SYSTEM and
//! Administrators. The first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so the
//! agent never joins a pipe someone else created first; remote clients are rejected.

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cms_protocol::IPC_MAX_MESSAGE_BYTES;
use std::os::windows::io::AsRawHandle;
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, PipeMode, ServerOptions,
};
use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::System::Pipes::GetNamedPipeServerProcessId;

use super::ServerProcess;
use crate::system::{self, SecurityDescriptor, SystemError};

/// The server side of one connection.
pub(crate) type ServerConnection = NamedPipeServer;
/// The client side of one connection.
pub(crate) type ClientConnection = NamedPipeClient;

/// How long a client waits between attempts while every pipe instance is busy.
const BUSY_RETRY: Duration = Duration::from_millis(50);

pub(crate) fn agent_endpoint(storage_path: &Path, is_admin: bool) -> Result<PathBuf, SystemError> {
    let base = if is_admin {
        "cms_agent_system".to_owned()
    } else {
        format!("cms_agent_{}", system::get_user_sid_string()?)
    };
    // The contract's names belong to the default storage path; an agent run with --data-dir
    // gets its own pipe, so `--force --data-dir B` can never stop the agent of folder A.
    let suffix = match system::default_data_dir(is_admin) {
        Some(default) if same_path(&default, storage_path) => String::new(),
        _ => format!("_{:016x}", path_hash(storage_path)),
    };
    Ok(PathBuf::from(format!(r"\\.\pipe\{base}{suffix}")))
}

pub(crate) fn test_endpoint(_dir: &Path, tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!(
        r"\\.\pipe\cms_agent_test_{tag}_{}_{n}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

fn same_path(a: &Path, b: &Path) -> bool {
    a.to_string_lossy().to_lowercase() == b.to_string_lossy().to_lowercase()
}

/// FNV-1a of the lowercased path: stable across runs and builds, unlike `DefaultHasher`.
fn path_hash(path: &Path) -> u64 {
    path.to_string_lossy()
        .to_lowercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Full control for SYSTEM, Administrators and the user the agent runs as; nobody else.
fn pipe_sddl() -> io::Result<String> {
    let sid = system::get_user_sid_string().map_err(io::Error::other)?;
    Ok(format!("D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{sid})"))
}

/// The pipe and the next instance waiting for a client.
#[derive(Debug)]
pub(crate) struct Listener {
    name: PathBuf,
    sddl: String,
    next: NamedPipeServer,
}

impl Listener {
    /// Creates the first instance; fails if any process already serves `name`.
    pub(crate) fn bind(name: &Path) -> io::Result<Self> {
        let sddl = pipe_sddl()?;
        let next = create_instance(name, &sddl, true)?;
        Ok(Listener {
            name: name.to_path_buf(),
            sddl,
            next,
        })
    }

    /// Waits for a client on the waiting instance and puts a fresh one in its place.
    pub(crate) async fn accept(&mut self) -> io::Result<ServerConnection> {
        self.next.connect().await?;
        let fresh = create_instance(&self.name, &self.sddl, false)?;
        Ok(std::mem::replace(&mut self.next, fresh))
    }
}

fn create_instance(name: &Path, sddl: &str, first: bool) -> io::Result<NamedPipeServer> {
    let descriptor = SecurityDescriptor::from_sddl(sddl)?;
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.as_ptr(),
        bInheritHandle: 0,
    };
    let buffer = IPC_MAX_MESSAGE_BYTES as u32;
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES whose descriptor (`descriptor`)
    // outlives the call; CreateNamedPipeW copies what it needs.
    unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .pipe_mode(PipeMode::Message)
            .reject_remote_clients(true)
            .in_buffer_size(buffer)
            .out_buffer_size(buffer)
            .create_with_security_attributes_raw(
                name,
                (&mut attributes as *mut SECURITY_ATTRIBUTES).cast::<c_void>(),
            )
    }
}

/// Opens the pipe in message read mode, retrying while every instance is busy
/// (`ERROR_PIPE_BUSY`); the caller bounds the wait with a timeout.
pub(crate) async fn connect(name: &Path) -> io::Result<ClientConnection> {
    loop {
        match ClientOptions::new().pipe_mode(PipeMode::Message).open(name) {
            Ok(client) => return Ok(client),
            Err(err) if err.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The process serving the pipe at the other end of `connection`, and the account it runs as.
pub(crate) fn server_process(connection: &ClientConnection) -> io::Result<ServerProcess> {
    let mut pid = 0u32;
    // SAFETY: `connection` owns an open pipe handle for the call; `pid` is a valid out pointer.
    if unsafe { GetNamedPipeServerProcessId(connection.as_raw_handle(), &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let identity = system::process_identity(pid).map_err(io::Error::other)?;
    Ok(ServerProcess { pid, identity })
}

/// Whether creating the first pipe instance failed because another process created the name
/// first (`FILE_FLAG_FIRST_PIPE_INSTANCE`: `ERROR_ACCESS_DENIED`, or `ERROR_PIPE_BUSY` when all
/// its instances are taken).
pub(crate) fn means_taken(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == ERROR_ACCESS_DENIED as i32 || code == ERROR_PIPE_BUSY as i32
    )
}

/// Whether a connect error means "no agent runs" (`ERROR_FILE_NOT_FOUND`).
pub(crate) fn means_not_running(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_storage_gets_the_contract_name_and_an_override_its_own() {
        let Some(default) = system::default_data_dir(true) else {
            return; // no %PROGRAMDATA% in this environment
        };
        let name = agent_endpoint(&default, true).unwrap();
        assert_eq!(name, PathBuf::from(r"\\.\pipe\cms_agent_system"));
        let other = agent_endpoint(Path::new(r"C:\portable\data"), true).unwrap();
        assert!(
            other
                .to_string_lossy()
                .starts_with(r"\\.\pipe\cms_agent_system_")
        );
        assert_ne!(other, name);
        let user = agent_endpoint(Path::new(r"C:\portable\data"), false).unwrap();
        let sid = system::get_user_sid_string().unwrap();
        assert!(
            user.to_string_lossy()
                .contains(&format!("cms_agent_{sid}_")),
            "{user:?}"
        );
    }

    #[tokio::test]
    async fn a_second_server_on_the_same_name_is_refused() {
        if system::running_under_wine() {
            return; // Wine does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE
        }
        let name = test_endpoint(Path::new("."), "squat");
        let _first = Listener::bind(&name).unwrap();
        assert!(Listener::bind(&name).is_err());
    }

    #[tokio::test]
    async fn a_missing_pipe_means_not_running() {
        let name = test_endpoint(Path::new("."), "absent");
        let err = connect(&name).await.unwrap_err();
        assert!(means_not_running(&err), "{err:?}");
    }
}
