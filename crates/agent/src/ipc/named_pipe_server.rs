//! `NamedPipeIPCServer`: the running agent's end of the IPC endpoint.
//!
//! Accepts clients until cancelled, reads one request per connection (size-capped, with a
//! deadline), checks the secret in constant time and hands authenticated commands to the
//! agent's [`IpcHandler`]. Malformed, oversized, truncated or unauthenticated input gets an
//! answer and changes nothing; no input can stop the server. It must never act on a command
//! itself, and never log the secret or a request's arguments.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use cms_protocol::{IpcCommand, IpcRequest, IpcResponse, IpcStatus};
use subtle::ConstantTimeEq;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{IpcEndpoint, IpcError, imp, read_message, write_message};
use crate::system::IpcSecret;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing an answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. Beyond it, the oldest client that has sent nothing is dropped
/// for the newcomer; only when every one of them has been heard is the newcomer closed.
const MAX_CONNECTIONS: usize = 8;
/// How long a stopping server waits for answers in flight (an acknowledged `--force`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed accept, so a persistent OS error cannot spin the CPU.
const ACCEPT_RETRY: Duration = Duration::from_millis(200);

/// What the agent does with an authenticated command; the server only transports.
pub trait IpcHandler: Send + Sync + 'static {
    /// Answers `command`.
    fn handle(&self, command: IpcCommand) -> IpcResponse;
}

/// The agent's IPC server, bound and ready; [`NamedPipeIPCServer::serve`] runs it.
#[derive(Debug)]
pub struct NamedPipeIPCServer {
    endpoint: IpcEndpoint,
    secret: IpcSecret,
    listener: imp::Listener,
}

impl NamedPipeIPCServer {
    /// Creates the endpoint (needs a Tokio runtime); fails when another process serves it.
    pub fn bind(endpoint: IpcEndpoint, secret: IpcSecret) -> Result<Self, IpcError> {
        let listener = imp::Listener::bind(endpoint.name()).map_err(|source| IpcError::Bind {
            endpoint: endpoint.to_string(),
            source,
        })?;
        tracing::info!(endpoint = %endpoint, "IPC server listening");
        Ok(NamedPipeIPCServer {
            endpoint,
            secret,
            listener,
        })
    }

    /// Serves clients until `cancel`, then lets answers in flight go out and closes the
    /// endpoint.
    pub async fn serve(mut self, handler: Arc<dyn IpcHandler>, cancel: CancellationToken) {
        let mut connections = JoinSet::new();
        let mut silent = SilentClients::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok(connection) => {
                        if connections.len() >= MAX_CONNECTIONS && !silent.drop_oldest() {
                            tracing::warn!(max = MAX_CONNECTIONS, "too many IPC clients at once, all of them heard; closing a connection unanswered");
                            continue;
                        }
                        let (secret, handler) = (self.secret.clone(), handler.clone());
                        connections.spawn(serve_connection(connection, secret, handler, silent.admit()));
                    }
                    Err(err) => {
                        tracing::warn!(endpoint = %self.endpoint, error = %err, "IPC accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                },
            }
        }
        drop(self.listener);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        tracing::info!(endpoint = %self.endpoint, "IPC server stopped");
    }
}

/// The connections that have not sent their request yet, oldest first. When every slot is
/// taken, the oldest of them is dropped to make room, so clients that connect and say nothing
/// can delay `--status`, `--stop` and `--force` by at most one slot's turn, never lock them out.
#[derive(Debug, Default)]
struct SilentClients {
    waiting: VecDeque<CancellationToken>,
}

impl SilentClients {
    /// A new connection, silent until its request arrives: the token it must give up on.
    fn admit(&mut self) -> CancellationToken {
        self.waiting.retain(|token| !token.is_cancelled());
        let token = CancellationToken::new();
        self.waiting.push_back(token.clone());
        token
    }

    /// Drops the oldest connection still waiting for its request; false when none is.
    fn drop_oldest(&mut self) -> bool {
        while let Some(token) = self.waiting.pop_front() {
            if !token.is_cancelled() {
                token.cancel();
                tracing::warn!(
                    "every IPC slot taken; dropping the oldest client that has sent nothing"
                );
                return true;
            }
        }
        false
    }
}

async fn serve_connection(
    mut connection: imp::ServerConnection,
    secret: IpcSecret,
    handler: Arc<dyn IpcHandler>,
    silent: CancellationToken,
) {
    let request = tokio::select! {
        read = tokio::time::timeout(REQUEST_TIMEOUT, read_message(&mut connection)) => Some(read),
        _ = silent.cancelled() => None,
    };
    // Heard, or out of time: no longer one of the silent (a cancelled token is skipped there).
    silent.cancel();
    let response = match request {
        None => IpcResponse::refusal(
            IpcStatus::Error,
            "dropped: no request was sent while other clients waited",
        ),
        Some(Err(_)) => {
            tracing::warn!(
                timeout_secs = REQUEST_TIMEOUT.as_secs(),
                "IPC client sent no complete request in time"
            );
            IpcResponse::refusal(IpcStatus::Error, "timed out waiting for the request")
        }
        Some(Ok(Err(err))) => {
            tracing::warn!(error = %err, "unreadable IPC request");
            IpcResponse::refusal(IpcStatus::Error, err.to_string())
        }
        Some(Ok(Ok(bytes))) => answer(&bytes, &secret, handler.as_ref()),
    };
    let written =
        tokio::time::timeout(ANSWER_TIMEOUT, write_message(&mut connection, &response)).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!(status = ?response.status, "IPC client left before the answer");
    }
}

/// Parses, authenticates and dispatches one request. Pure with respect to the transport.
pub(crate) fn answer(bytes: &[u8], secret: &IpcSecret, handler: &dyn IpcHandler) -> IpcResponse {
    let request: IpcRequest = match serde_json::from_slice(bytes) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(bytes = bytes.len(), "malformed IPC request");
            return IpcResponse::refusal(IpcStatus::Error, format!("malformed request: {err}"));
        }
    };
    if !secret_matches(&request.secret, secret) {
        tracing::warn!(command = ?request.command, "IPC request refused: invalid secret");
        return IpcResponse::refusal(IpcStatus::InvalidSecret, "the IPC secret does not match");
    }
    if !request.args.is_empty() {
        // An older `--force` sends the new instance's arguments; they are not needed here.
        tracing::debug!(count = request.args.len(), "IPC request arguments ignored");
    }
    tracing::info!(command = ?request.command, "IPC request accepted");
    let response = handler.handle(request.command);
    tracing::info!(command = ?request.command, status = ?response.status, "IPC request answered");
    response
}

/// Constant-time comparison, so response timing says nothing about how much of a guess matched.
fn secret_matches(offered: &str, secret: &IpcSecret) -> bool {
    offered.as_bytes().ct_eq(secret.expose().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cms_protocol::{AgentState, IPC_MAX_MESSAGE_BYTES};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ipc::{query_status, send_force_command, send_request, send_stop_command};

    /// Counts what reached the agent; answers like an idle agent.
    #[derive(Debug, Default)]
    struct Recorder {
        force: AtomicUsize,
        stop: AtomicUsize,
        status: AtomicUsize,
    }

    impl IpcHandler for Recorder {
        fn handle(&self, command: IpcCommand) -> IpcResponse {
            let counter = match command {
                IpcCommand::ForceRestart => &self.force,
                IpcCommand::Stop => &self.stop,
                IpcCommand::Status => &self.status,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            IpcResponse {
                status: IpcStatus::Acknowledged,
                state: Some(AgentState::Idle),
                version: Some("9.9.9".into()),
                pid: Some(std::process::id()),
                message: None,
            }
        }
    }

    struct Running {
        endpoint: IpcEndpoint,
        secret: IpcSecret,
        recorder: Arc<Recorder>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn start(tag: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = IpcEndpoint::for_test(dir.path(), tag);
        let secret = IpcSecret::generate().unwrap();
        let server = NamedPipeIPCServer::bind(endpoint.clone(), secret.clone()).unwrap();
        let recorder = Arc::new(Recorder::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(recorder.clone(), cancel.clone()));
        Running {
            endpoint,
            secret,
            recorder,
            cancel,
            task,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn round_trip_status_wrong_secret_stop_and_force() {
        let server = start("roundtrip");
        let status = query_status(&server.endpoint, &server.secret)
            .await
            .unwrap();
        assert_eq!(status.status, IpcStatus::Acknowledged);
        assert_eq!(status.state, Some(AgentState::Idle));
        assert_eq!(status.version.as_deref(), Some("9.9.9"));

        let wrong = IpcSecret::generate().unwrap();
        let refused = send_force_command(&server.endpoint, &wrong).await.unwrap();
        assert_eq!(refused.status, IpcStatus::InvalidSecret);
        assert_eq!(
            refused.state, None,
            "no state for an unauthenticated client"
        );
        assert_eq!(server.recorder.force.load(Ordering::SeqCst), 0);
        let refused = send_stop_command(&server.endpoint, &wrong).await.unwrap();
        assert_eq!(refused.status, IpcStatus::InvalidSecret);
        assert_eq!(server.recorder.stop.load(Ordering::SeqCst), 0);
        let stopped = send_stop_command(&server.endpoint, &server.secret)
            .await
            .unwrap();
        assert_eq!(stopped.status, IpcStatus::Acknowledged);
        assert_eq!(server.recorder.stop.load(Ordering::SeqCst), 1);

        let ack = send_force_command(&server.endpoint, &server.secret)
            .await
            .unwrap();
        assert_eq!(ack.status, IpcStatus::Acknowledged);
        assert_eq!(server.recorder.force.load(Ordering::SeqCst), 1);

        server.cancel.cancel();
        server.task.await.unwrap();
        let gone = query_status(&server.endpoint, &server.secret).await;
        assert!(matches!(gone, Err(IpcError::NotRunning { .. })), "{gone:?}");
    }

    #[tokio::test]
    async fn clients_that_connect_and_say_nothing_cannot_lock_out_status_or_force() {
        let server = start("silent");
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 4 {
            silent.push(imp::connect(server.endpoint.name()).await.unwrap());
        }
        let status = query_status(&server.endpoint, &server.secret)
            .await
            .unwrap();
        assert_eq!(status.status, IpcStatus::Acknowledged);
        // Silent clients keep arriving between the two commands: still heard.
        for _ in 0..4 {
            silent.push(imp::connect(server.endpoint.name()).await.unwrap());
        }
        let force = send_force_command(&server.endpoint, &server.secret)
            .await
            .unwrap();
        assert_eq!(force.status, IpcStatus::Acknowledged);
        assert_eq!(server.recorder.force.load(Ordering::SeqCst), 1);
        server.cancel.cancel();
        server.task.await.unwrap();
    }

    /// Sends `bytes` on a fresh connection. With a trailing newline the answer is read and
    /// returned; without one the connection is dropped after writing (a truncated message).
    async fn throw(endpoint: &IpcEndpoint, bytes: &[u8]) -> Option<IpcResponse> {
        let mut connection = imp::connect(endpoint.name()).await.ok()?;
        let _ = connection.write_all(bytes).await;
        if bytes.last() != Some(&b'\n') {
            return None;
        }
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), connection.read_to_end(&mut answer))
                .await;
        if !matches!(read, Ok(Ok(_))) && answer.is_empty() {
            return None;
        }
        let line = answer.split(|b| *b == b'\n').next()?;
        serde_json::from_slice(line).ok()
    }

    fn valid(command: &str, secret: &str) -> Vec<u8> {
        format!(r#"{{"command":"{command}","secret":"{secret}","args":[]}}"#).into_bytes()
    }

    fn nasty_cases(secret: &str) -> Vec<Vec<u8>> {
        let line = |s: &str| format!("{s}\n").into_bytes();
        let mut cases = vec![
            line(""),
            line("{}"),
            line("null"),
            line("[]"),
            line("\"force_restart\""),
            line(r#"{"command":"force_restart"}"#),
            line(r#"{"command":"force_restart","secret":123}"#),
            line(r#"{"command":"force_restart","secret":null}"#),
            line(&format!(r#"{{"command":"shutdown","secret":"{secret}"}}"#)),
            line(&format!(
                r#"{{"command":"force_restart","secret":"{secret}","x":1}}"#
            )),
            line(&format!(
                r#"{{"command":"force_restart","secret":"{}"}}"#,
                secret.to_uppercase()
            )),
            line(&format!(
                r#"{{"command":"force_restart","secret":"{}"}}"#,
                &secret[..63]
            )),
            line(&format!(
                r#"{{"command":"force_restart","secret":"{secret}0"}}"#
            )),
            line(&format!(
                r#"{{"command":"force_restart","secret":" {secret}"}}"#
            )),
            line(&format!(
                r#"{{"command":"force_restart","secret":"{secret}","args":"x"}}"#
            )),
            line(&"[".repeat(5000)),
            line(&format!("{}{}", "[".repeat(100_000 / 2), "]".repeat(10))),
            b"\xff\xfe\x00\x00garbage\n".to_vec(),
            b"\x00\x00\x00\n".to_vec(),
            vec![b'a'; IPC_MAX_MESSAGE_BYTES + 10],
            [vec![b' '; IPC_MAX_MESSAGE_BYTES], b"\n".to_vec()].concat(),
            [vec![b'{'; 1 << 20], b"\n".to_vec()].concat(),
        ];
        let whole = valid("force_restart", secret);
        for cut in [1, 10, whole.len() / 2, whole.len() - 1, whole.len()] {
            cases.push(whole[..cut].to_vec()); // truncated: no newline, connection closed
        }
        cases
    }

    fn random_case(rng: &mut fastrand::Rng, secret: &str) -> Vec<u8> {
        let mut bytes = match rng.u8(..4) {
            0 => valid(
                if rng.bool() {
                    "force_restart"
                } else {
                    "status"
                },
                secret,
            ),
            1 => {
                let len = rng.usize(..IPC_MAX_MESSAGE_BYTES * 2);
                (0..len).map(|_| rng.u8(..)).collect()
            }
            2 => valid("force_restart", &"0".repeat(64)),
            _ => br#"{"command":"status","secret":"","args":["a","b"]}"#.to_vec(),
        };
        for _ in 0..rng.usize(0..4) {
            if !bytes.is_empty() {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
        }
        if rng.u8(..10) > 1 {
            bytes.retain(|b| *b != b'\n');
            bytes.push(b'\n');
        }
        bytes
    }

    /// The command of `bytes` if it is a complete request with the right secret (the fuzz's
    /// oracle, written independently of the server's code path).
    fn authentic(bytes: &[u8], secret: &IpcSecret) -> Option<IpcCommand> {
        let line = bytes.strip_suffix(b"\n")?;
        if line.len() + 1 > IPC_MAX_MESSAGE_BYTES || line.contains(&b'\n') {
            return None;
        }
        let request = serde_json::from_slice::<IpcRequest>(line).ok()?;
        (request.secret == secret.expose()).then_some(request.command)
    }

    #[tokio::test]
    async fn malformed_oversized_and_truncated_input_never_kills_or_stops_the_server() {
        let server = start("fuzz");
        let secret = server.secret.expose().to_owned();
        // A client that sends half a request and then waits must not hold the server up.
        let mut stalled = imp::connect(server.endpoint.name()).await.unwrap();
        stalled.write_all(br#"{"command":"sta"#).await.unwrap();

        let mut rng = fastrand::Rng::with_seed(0x00C0_FFEE);
        let mut cases = nasty_cases(&secret);
        cases.extend((0..300).map(|_| random_case(&mut rng, &secret)));
        let mut expected_force = 0;
        for (i, case) in cases.iter().enumerate() {
            let answer = throw(&server.endpoint, case).await;
            let command = authentic(case, &server.secret);
            if command == Some(IpcCommand::ForceRestart) {
                expected_force += 1;
            }
            if command.is_some() {
                let status = answer.map(|a| a.status);
                assert_eq!(
                    status,
                    Some(IpcStatus::Acknowledged),
                    "case {i}: authentic request not served"
                );
            } else if let Some(answer) = answer {
                assert_ne!(
                    answer.status,
                    IpcStatus::Acknowledged,
                    "case {i} was obeyed: {:?}",
                    String::from_utf8_lossy(&case[..case.len().min(200)])
                );
            }
            assert!(!server.task.is_finished(), "the server died on case {i}");
        }
        assert!(
            expected_force > 0,
            "the fuzz never sent an authentic force_restart"
        );
        assert_eq!(server.recorder.force.load(Ordering::SeqCst), expected_force);

        // Many clients at once: some may be turned away, none may break the server.
        let burst: Vec<_> = (0..24)
            .map(|_| {
                let endpoint = server.endpoint.clone();
                tokio::spawn(async move { throw(&endpoint, b"{}\n").await })
            })
            .collect();
        for client in burst {
            let _ = client.await;
        }

        let mut answer = Vec::new();
        let stalled_read =
            tokio::time::timeout(Duration::from_secs(15), stalled.read_to_end(&mut answer)).await;
        assert!(
            matches!(stalled_read, Ok(Ok(_))),
            "the stalled client was never answered"
        );
        assert!(
            String::from_utf8_lossy(&answer).contains("\"error\""),
            "{answer:?}"
        );

        let status = query_status(&server.endpoint, &server.secret)
            .await
            .unwrap();
        assert_eq!(
            status.status,
            IpcStatus::Acknowledged,
            "server still serves after the fuzz"
        );
        let wrong = IpcRequest {
            command: IpcCommand::ForceRestart,
            secret: String::new(),
            args: vec![],
        };
        let refused = send_request(&server.endpoint, &wrong).await.unwrap();
        assert_eq!(refused.status, IpcStatus::InvalidSecret);
        server.cancel.cancel();
        server.task.await.unwrap();
    }
}
