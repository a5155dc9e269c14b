//! Local IPC between `cms_agent --force`/`--stop`/`--status` and the running agent.
//!
//! One API over two transports: a Windows named pipe (`\\.\pipe\cms_agent_system` when
//! elevated, `\\.\pipe\cms_agent_<SID>` otherwise; message mode, DACL limited to the owner,
//! SYSTEM and Administrators) and, on Linux, a Unix socket `agent.sock` (0600) in the storage
//! path. Each connection carries one `\n`-terminated JSON request and one JSON response, both
//! capped at [`IPC_MAX_MESSAGE_BYTES`]. Only this module and `system/` may say `cfg(windows)`.
//! This module must never decide what a command does (that is the agent's [`IpcHandler`]),
//! and never log the secret or the arguments a request carries.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
use windows as imp;

pub mod named_pipe_client;
pub mod named_pipe_server;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use cms_protocol::IPC_MAX_MESSAGE_BYTES;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use cms_platform::{layout, lock_file};

use crate::system::{self, IpcSecret, ProcessIdentity, SecretAction, SecretScope, SystemError};

pub use named_pipe_client::{query_status, send_force_command, send_request, send_stop_command};
pub use named_pipe_server::{IpcHandler, NamedPipeIPCServer};

/// Where the running agent listens: a pipe name on Windows, a socket path on Linux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcEndpoint {
    name: PathBuf,
    server: ServerCheck,
}

/// Who may serve an endpoint. A standard user can create a pipe named like the agent's while
/// the agent restarts; a client that talked to it would hand over the IPC secret.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerCheck {
    /// The agent of a storage path: the process that holds its `agent.lock`, running as the
    /// account the agent runs as (privileged for the machine-wide agent, this user otherwise).
    LockHolder {
        /// The storage path's `agent.lock`.
        lock_path: PathBuf,
        /// Whether the machine-wide (privileged) agent serves it.
        machine_wide: bool,
    },
    /// A test endpoint, served by the test itself.
    Unchecked,
}

impl IpcEndpoint {
    /// The endpoint of the agent that owns `storage_path` with the given rights.
    pub fn for_agent(storage_path: &Path, is_admin: bool) -> Result<Self, IpcError> {
        let name = imp::agent_endpoint(storage_path, is_admin).map_err(IpcError::Endpoint)?;
        Ok(IpcEndpoint {
            name,
            server: ServerCheck::LockHolder {
                lock_path: layout::lock_path(storage_path),
                machine_wide: is_admin,
            },
        })
    }

    /// A private endpoint for tests (a socket in `dir`, or a uniquely named pipe).
    pub fn for_test(dir: &Path, tag: &str) -> Self {
        IpcEndpoint {
            name: imp::test_endpoint(dir, tag),
            server: ServerCheck::Unchecked,
        }
    }

    /// The pipe name or socket path.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Refuses a connection whose server is not this endpoint's agent, before anything is
    /// sent on it: the process must hold the storage path's `agent.lock` and run as the
    /// account the agent runs as.
    fn check_server(&self, connection: &imp::ClientConnection) -> Result<(), IpcError> {
        let ServerCheck::LockHolder {
            lock_path,
            machine_wide,
        } = &self.server
        else {
            return Ok(());
        };
        let server = imp::server_process(connection).map_err(|source| IpcError::Io {
            endpoint: self.to_string(),
            source,
        })?;
        let refuse = |why: String| {
            tracing::error!(endpoint = %self, pid = server.pid, account = %server.identity.account, why = %why, "IPC endpoint served by another process; nothing sent");
            Err(IpcError::NotTheAgent {
                endpoint: self.to_string(),
                pid: server.pid,
                account: server.identity.account.clone(),
                why: why.clone(),
            })
        };
        if let Some(why) = wrong_account(&server.identity, *machine_wide) {
            return refuse(why);
        }
        match lock_file::read_lock_record(lock_path) {
            Some(record) if record.pid == server.pid => Ok(()),
            Some(record) => refuse(format!(
                "but {} names process {} as the agent",
                lock_path.display(),
                record.pid
            )),
            None => refuse(format!("but no agent holds {}", lock_path.display())),
        }
    }
}

/// The process serving an endpoint, as the OS reports it for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerProcess {
    /// Its PID.
    pub(crate) pid: u32,
    /// The account it runs as.
    pub(crate) identity: ProcessIdentity,
}

/// Why `identity` may not serve the agent's endpoint, if it may not: the machine-wide agent
/// runs privileged (SYSTEM, an elevated administrator, root), a per-user one as this user.
fn wrong_account(identity: &ProcessIdentity, machine_wide: bool) -> Option<String> {
    if machine_wide {
        return (!identity.privileged)
            .then(|| "an unprivileged account, not the machine-wide agent's".to_owned());
    }
    match system::get_user_sid_string() {
        Ok(own) if own == identity.account => None,
        Ok(own) => Some(format!("not this user ({own})")),
        Err(err) => Some(format!("and this user's account cannot be read ({err})")),
    }
}

impl fmt::Display for IpcEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name.display())
    }
}

/// Why an IPC exchange failed; `main` maps [`IpcError::NotRunning`] to "nothing runs".
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The endpoint's name could not be worked out (the user's SID could not be read).
    #[error("cannot name the IPC endpoint: {0}")]
    Endpoint(#[source] SystemError),
    /// The secret could not be read or created.
    #[error("cannot use the IPC secret: {0}")]
    Secret(#[source] SystemError),
    /// Another process already serves this endpoint, or the OS refused to create it.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// What the OS said.
        source: io::Error,
    },
    /// Nobody listens: no agent runs for this storage path.
    #[error("no agent is listening on {endpoint}")]
    NotRunning {
        /// The endpoint.
        endpoint: String,
    },
    /// The agent did not answer in time.
    #[error("the agent on {endpoint} did not answer within {secs} s ({during})")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// Seconds waited.
        secs: u64,
        /// Which step timed out.
        during: &'static str,
    },
    /// The connection failed midway.
    #[error("IPC with {endpoint} failed: {source}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// What the OS said.
        source: io::Error,
    },
    /// Another process serves the endpoint (a squatter): nothing was sent to it.
    #[error(
        "refusing to talk to {endpoint}: it is served by process {pid} running as {account}, {why}; nothing was sent (the agent may be restarting: try again, and find out what process {pid} is)"
    )]
    NotTheAgent {
        /// The endpoint.
        endpoint: String,
        /// The PID of the process that serves it.
        pid: u32,
        /// The account it runs as.
        account: String,
        /// Why it is not the agent.
        why: String,
    },
    /// The answer was not a valid response.
    #[error("the agent on {endpoint} sent an unreadable answer: {reason}")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
        /// Why it could not be read.
        reason: String,
    },
}

impl IpcError {
    /// Whether binding failed because another process already serves the endpoint's name.
    pub fn endpoint_taken(&self) -> bool {
        matches!(self, IpcError::Bind { source, .. } if imp::means_taken(source))
    }
}

/// Reads the IPC secret for this agent, creating one when there is none or the stored one is
/// unusable; the server calls it at start, so a client only ever needs to read.
pub fn load_or_create_secret(storage_path: &Path, is_admin: bool) -> Result<IpcSecret, IpcError> {
    let scope = SecretScope::current(is_admin);
    match system::manage_ipc_secret(SecretAction::Get, scope, storage_path) {
        Ok(Some(secret)) => return Ok(secret),
        Ok(None) => tracing::info!(scope = scope.as_str(), "creating the IPC secret"),
        Err(err @ SystemError::Invalid { .. }) => {
            tracing::warn!(error = %err, "replacing an unusable IPC secret");
        }
        Err(err) => return Err(IpcError::Secret(err)),
    }
    system::manage_ipc_secret(SecretAction::Create, scope, storage_path)
        .map_err(IpcError::Secret)?
        .ok_or_else(|| {
            IpcError::Secret(SystemError::NotFound {
                what: "the IPC secret just created".into(),
            })
        })
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// Longer than [`IPC_MAX_MESSAGE_BYTES`].
    #[error("message longer than {IPC_MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    /// The peer closed the connection before the terminating newline.
    #[error("message truncated: the connection closed before its end")]
    Truncated,
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one `\n`-terminated message (without the newline); never buffers more than the cap.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Vec<u8>, FrameError> {
    let mut message = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        let read = &chunk[..n];
        if let Some(end) = read.iter().position(|b| *b == b'\n') {
            if message.len() + end + 1 > IPC_MAX_MESSAGE_BYTES {
                return Err(FrameError::TooLarge);
            }
            message.extend_from_slice(&read[..end]);
            return Ok(message);
        }
        if message.len() + n >= IPC_MAX_MESSAGE_BYTES {
            return Err(FrameError::TooLarge);
        }
        message.extend_from_slice(read);
    }
}

/// Writes `value` as one JSON line in a single write (one message on a message-mode pipe).
pub(crate) async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &impl Serialize,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    if bytes.len() > IPC_MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message longer than {IPC_MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_another_process_serves_is_told_apart_from_other_bind_failures() {
        let bind = |source| IpcError::Bind {
            endpoint: "endpoint".into(),
            source,
        };
        #[cfg(unix)]
        let taken = io::Error::from(io::ErrorKind::AddrInUse);
        #[cfg(windows)]
        let taken = io::Error::from_raw_os_error(5); // ERROR_ACCESS_DENIED: first instance taken
        assert!(bind(taken).endpoint_taken());
        assert!(!bind(io::Error::from(io::ErrorKind::NotFound)).endpoint_taken());
        let secret = IpcError::Secret(SystemError::NotFound { what: "x".into() });
        assert!(!secret.endpoint_taken());
    }
}
