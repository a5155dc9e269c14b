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

/// Asks the running agent to shut down gracefully so this process can run with `new_args`.
pub async fn send_force_command(
    endpoint: &IpcEndpoint,
    secret: &IpcSecret,
    new_args: Vec<String>,
) -> Result<IpcResponse, IpcError> {
    let request = IpcRequest {
        command: IpcCommand::ForceRestart,
        secret: secret.expose().to_owned(),
        args: new_args,
    };
    send_request(endpoint, &request).await
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
