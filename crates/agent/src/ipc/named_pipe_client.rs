//! `send_force_command`, `send_stop_command` and `query_status`: the client end of the IPC
//! endpoint.
//!
//! One connection per request: connect (retrying while the pipe is busy, bounded by a
//! timeout), write one JSON line, read one JSON line with a timeout. "Nobody listens" is its
//! own error ([`IpcError::NotRunning`]) because callers treat it as a normal answer. This
//! module must never decide what to do with the answer.

use std::time::Duration;

use cms_protocol::{IpcCommand, IpcRequest, IpcResponse};

use super::{FrameError, IpcEndpoint, IpcError, imp, read_message, write_message};
use crate::system::IpcSecret;

/// How long to wait for a connection (a busy pipe is retried within it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the running agent to shut down gracefully so this process can take over. It sends no
/// arguments: what the new instance runs with (an enrollment token, a proxy password) is its
/// own, saved in config.json, and never crosses the pipe.
pub async fn send_force_command(
    endpoint: &IpcEndpoint,
    secret: &IpcSecret,
) -> Result<IpcResponse, IpcError> {
    send_command(endpoint, secret, IpcCommand::ForceRestart).await
}

/// Asks the running agent to shut down gracefully and stay stopped (`--stop`).
pub async fn send_stop_command(
    endpoint: &IpcEndpoint,
    secret: &IpcSecret,
) -> Result<IpcResponse, IpcError> {
    send_command(endpoint, secret, IpcCommand::Stop).await
}

/// Asks the running agent for its state and version.
pub async fn query_status(
    endpoint: &IpcEndpoint,
    secret: &IpcSecret,
) -> Result<IpcResponse, IpcError> {
    send_command(endpoint, secret, IpcCommand::Status).await
}

/// Sends `command` without arguments.
async fn send_command(
    endpoint: &IpcEndpoint,
    secret: &IpcSecret,
    command: IpcCommand,
) -> Result<IpcResponse, IpcError> {
    let request = IpcRequest {
        command,
        secret: secret.expose().to_owned(),
        args: Vec::new(),
    };
    send_request(endpoint, &request).await
}

/// Sends any request (tests use it to send wrong secrets) and reads the answer.
pub async fn send_request(
    endpoint: &IpcEndpoint,
    request: &IpcRequest,
) -> Result<IpcResponse, IpcError> {
    let name = endpoint.to_string();
    let timeout = |during, limit: Duration| IpcError::Timeout {
        endpoint: name.clone(),
        secs: limit.as_secs(),
        during,
    };
    let io = |source| IpcError::Io {
        endpoint: name.clone(),
        source,
    };
    let mut connection =
        match tokio::time::timeout(CONNECT_TIMEOUT, imp::connect(endpoint.name())).await {
            Err(_) => return Err(timeout("connecting", CONNECT_TIMEOUT)),
            Ok(Err(err)) if imp::means_not_running(&err) => {
                return Err(IpcError::NotRunning {
                    endpoint: name.clone(),
                });
            }
            Ok(Err(err)) => return Err(io(err)),
            Ok(Ok(connection)) => connection,
        };
    endpoint.check_server(&connection)?;
    write_message(&mut connection, request).await.map_err(io)?;
    let bytes = match tokio::time::timeout(ANSWER_TIMEOUT, read_message(&mut connection)).await {
        Err(_) => return Err(timeout("waiting for the answer", ANSWER_TIMEOUT)),
        Ok(Err(FrameError::Io(err))) => return Err(io(err)),
        Ok(Err(err)) => {
            return Err(IpcError::BadResponse {
                endpoint: name.clone(),
                reason: err.to_string(),
            });
        }
        Ok(Ok(bytes)) => bytes,
    };
    serde_json::from_slice(&bytes).map_err(|err| IpcError::BadResponse {
        endpoint: name.clone(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use cms_platform::layout;
    use cms_protocol::{IpcStatus, LockRecord};

    use super::*;
    use crate::ipc::wrong_account;
    use crate::system::{self, IpcSecret, ProcessIdentity};

    fn write_lock_record(storage: &Path, pid: u32) {
        let record = LockRecord {
            pid,
            process_start: 0,
            timestamp: String::new(),
            version: "1.0.0".into(),
        };
        let bytes = serde_json::to_vec(&record).unwrap();
        std::fs::write(layout::lock_path(storage), bytes).unwrap();
    }

    /// Serves `clients` connections on the agent's endpoint name as a squatter would (this
    /// test's process, not the lock holder), answering what arrives; returns how many bytes
    /// each client sent.
    async fn squat(endpoint: &IpcEndpoint, clients: usize) -> tokio::task::JoinHandle<Vec<usize>> {
        let mut listener = imp::Listener::bind(endpoint.name()).unwrap();
        tokio::spawn(async move {
            let mut received = Vec::new();
            for _ in 0..clients {
                let mut connection = listener.accept().await.unwrap();
                let message = read_message(&mut connection).await.unwrap_or_default();
                received.push(message.len());
                if !message.is_empty() {
                    let answer = IpcResponse::refusal(IpcStatus::Acknowledged, "squatter");
                    let _ = write_message(&mut connection, &answer).await;
                }
            }
            received
        })
    }

    #[tokio::test]
    async fn a_server_that_does_not_hold_the_agents_lock_is_sent_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = IpcEndpoint::for_agent(dir.path(), false).unwrap();
        let secret = IpcSecret::generate().unwrap();
        let squatter = squat(&endpoint, 3).await;

        let no_agent = query_status(&endpoint, &secret).await;
        assert!(
            matches!(&no_agent, Err(IpcError::NotTheAgent { pid, .. }) if *pid == std::process::id()),
            "{no_agent:?}"
        );
        let message = no_agent.unwrap_err().to_string();
        assert!(message.contains("no agent holds"), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );

        write_lock_record(dir.path(), std::process::id() + 1);
        let other_holder = send_force_command(&endpoint, &secret).await;
        assert!(
            matches!(&other_holder, Err(IpcError::NotTheAgent { why, .. }) if why.contains("names process")),
            "{other_holder:?}"
        );

        // The lock holder itself (here: this process) is talked to.
        write_lock_record(dir.path(), std::process::id());
        let holder = query_status(&endpoint, &secret).await.unwrap();
        assert_eq!(holder.status, IpcStatus::Acknowledged);

        let received = squatter.await.unwrap();
        assert_eq!(
            received[..2],
            [0, 0],
            "a squatter received bytes: {received:?}"
        );
        assert!(received[2] > 0, "the lock holder received nothing");
    }

    #[test]
    fn the_machine_wide_endpoint_needs_a_privileged_server_and_a_user_one_the_same_user() {
        let own = system::get_user_sid_string().unwrap();
        let standard = ProcessIdentity {
            account: "1000".into(),
            privileged: false,
        };
        let privileged = ProcessIdentity {
            account: "S-1-5-18".into(),
            privileged: true,
        };
        assert!(wrong_account(&standard, true).is_some());
        assert!(wrong_account(&privileged, true).is_none());
        let same_user = ProcessIdentity {
            account: own.clone(),
            privileged: false,
        };
        assert!(wrong_account(&same_user, false).is_none());
        let other_user = ProcessIdentity {
            account: format!("{own}-other"),
            privileged: true,
        };
        assert!(wrong_account(&other_user, false).is_some());
    }
}
