//! One simulated agent's package download, as a `download` order starts it: the update check a
//! push asks for (`GET /api/v1/agent/update`, at a random moment of the push's spread when it
//! asked for one, as the agent does), then the offered `package_url`, both with the agent's
//! bearer token on a connection of their own (beside its WebSocket, whose heartbeats go on
//! meanwhile).
//!
//! A `503` with `Retry-After` (the update-check line or the download budget is full) is waited
//! out as the agent does (the server's wait plus 0-50 % jitter) and counted as a busy answer,
//! never as a failure; after [`MAX_BUSY`] of them in one request the download is given up, like
//! the agent's. The package is counted and discarded as it streams
//! in: it must never reach the disk, and the bench does not check its hash (the agent does).
//! Every failure is recorded once with its reason, never retried silently.

use std::sync::Arc;
use std::time::Duration;

use cms_protocol::{UpdateCheckResponse, paths};
use hyper::StatusCode;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::http::{Dialer, Fetched, HttpConnection};

/// Busy answers one download waits out before it gives up (the agent's number).
const MAX_BUSY: u32 = 40;

/// Downloads the release offered to the agent holding `token` after `delay` (the push's
/// `check_delay`, as the agent waits), recording the outcome; ends early (recording nothing)
/// on `stop`.
pub async fn run(
    shared: Arc<Shared>,
    dialer: Dialer,
    token: String,
    delay: Duration,
    stop: CancellationToken,
) {
    let recorder = &shared.recorder;
    let fetch = async {
        tokio::time::sleep(delay).await;
        fetch(&shared, dialer, &token).await
    };
    tokio::select! {
        () = stop.cancelled() => {}
        outcome = fetch => match outcome {
            Ok(bytes) => recorder.download_done(bytes),
            Err(error) => recorder.download_failed(error),
        },
    }
}

/// The update check, then the package until it comes whole: its length.
async fn fetch(shared: &Shared, dialer: Dialer, token: &str) -> Result<u64, String> {
    let mut http = HttpConnection::new(dialer);
    let url = offered_package(shared, &mut http, token).await?;
    let answer = get_when_not_busy(shared, &mut http, Ask::Package, &url, token).await?;
    Ok(answer.bytes)
}

/// What one simulated agent asks the server for.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// The update check: its answer is read.
    UpdateCheck,
    /// The package: counted and discarded.
    Package,
}

impl Ask {
    fn what(self) -> &'static str {
        match self {
            Ask::UpdateCheck => "update check",
            Ask::Package => "package download",
        }
    }
}

/// `GET url`, asked again after each `503` + `Retry-After` wait (see the module docs) until
/// another answer comes: that answer when it is `200`, an error otherwise.
async fn get_when_not_busy(
    shared: &Shared,
    http: &mut HttpConnection,
    ask: Ask,
    url: &str,
    token: &str,
) -> Result<Fetched, String> {
    let what = ask.what();
    let mut busy = 0;
    loop {
        let answer = http
            .get(url, token, matches!(ask, Ask::UpdateCheck))
            .await
            .map_err(|err| format!("{what}: {err}"))?;
        match (answer.status, answer.retry_after) {
            (StatusCode::OK, _) => return Ok(answer),
            (StatusCode::SERVICE_UNAVAILABLE, Some(secs)) if busy < MAX_BUSY => {
                busy += 1;
                shared.recorder.download_busy();
                tokio::time::sleep(with_jitter(Duration::from_secs(secs))).await;
            }
            (status, _) => return Err(format!("{what} answered {status}")),
        }
    }
}

/// The `package_url` the update check offers this agent.
async fn offered_package(
    shared: &Shared,
    http: &mut HttpConnection,
    token: &str,
) -> Result<String, String> {
    let settings = &shared.settings;
    let check = format!(
        "{}?version={}&platform={}",
        paths::UPDATE_CHECK,
        settings.agent_version,
        settings.platform
    );
    let answer = get_when_not_busy(shared, http, Ask::UpdateCheck, &check, token).await?;
    let offer: UpdateCheckResponse = serde_json::from_slice(&answer.body)
        .map_err(|err| format!("update check answer: {err}"))?;
    offer
        .update
        .map(|update| update.package_url)
        .ok_or_else(|| "the update check offered nothing".to_owned())
}

/// `wait` plus 0-50 % of it, as the agent spreads agents refused together.
fn with_jitter(wait: Duration) -> Duration {
    wait.mul_f64(1.0 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_up_to_half_the_wait() {
        for _ in 0..100 {
            let waited = with_jitter(Duration::from_secs(2));
            assert!(waited >= Duration::from_secs(2) && waited <= Duration::from_secs(3));
        }
    }
}
