//! Linux transport: a Unix socket `agent.sock` (0600) in the storage path, whose folder is
//! 0700 already. Only the lock holder binds it, so a socket file found at bind time is stale.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use super::ServerProcess;
use crate::system::{ProcessIdentity, SystemError};

/// Socket file name inside the storage path.
const SOCKET_FILE_NAME: &str = "agent.sock";

/// The server side of one connection.
pub(crate) type ServerConnection = UnixStream;
/// The client side of one connection.
pub(crate) type ClientConnection = UnixStream;

pub(crate) fn agent_endpoint(storage_path: &Path, _is_admin: bool) -> Result<PathBuf, SystemError> {
    Ok(storage_path.join(SOCKET_FILE_NAME))
}

pub(crate) fn test_endpoint(dir: &Path, tag: &str) -> PathBuf {
    dir.join(format!("{tag}.sock"))
}

/// A bound socket; the file is removed when it is dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path`, replacing a stale socket file, and makes it 0600.
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a stale IPC socket"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let inner = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Waits for the next client.
    pub(crate) async fn accept(&mut self) -> io::Result<ServerConnection> {
        let (stream, _) = self.inner.accept().await?;
        Ok(stream)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to `path`; `NotFound`/`ConnectionRefused` mean nobody listens.
pub(crate) async fn connect(path: &Path) -> io::Result<ClientConnection> {
    UnixStream::connect(path).await
}

/// The process at the other end of `connection`, from the kernel's record of the peer
/// (`SO_PEERCRED`, taken when the server called `listen`, so it cannot be forged later).
pub(crate) fn server_process(connection: &ClientConnection) -> io::Result<ServerProcess> {
    let peer = connection.peer_cred()?;
    let pid = peer
        .pid()
        .and_then(|pid| u32::try_from(pid).ok())
        .ok_or_else(|| io::Error::other("the kernel reported no PID for the IPC server"))?;
    Ok(ServerProcess {
        pid,
        identity: ProcessIdentity {
            account: peer.uid().to_string(),
            privileged: peer.uid() == 0,
        },
    })
}

/// Whether a bind error means another process serves the socket's path (the stale file is
/// removed first, so only a live listener racing this one).
pub(crate) fn means_taken(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::AddrInUse
}

/// Whether a connect error means "no agent runs" rather than a failure.
pub(crate) fn means_not_running(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}
