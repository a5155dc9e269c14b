//! Download throughput: a large release package fetched through the agent's own downloader
//! (`cms-loadgen download`, which calls `HttpClient::download_file` on the agent's
//! single-threaded runtime) and by `curl`, from the same URL of the same server, alternately in
//! the same run, so both see the same machine state.
//!
//! The package is published by the real `release publish` with an incompressible agent file of
//! the requested size. Both clients write to files in the same folder; the agent's downloader
//! also flushes its file to disk before it returns (it is part of its cost). The bearer token
//! reaches both through stdin or the environment, never a command line or a log.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::agent::MB;
use super::fixture;
use super::plan::Plan;
use super::stats::Summary;
use crate::server::RunningServer;
use crate::util::describe;

/// Throughput of both clients, MB/s, and their ratio.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadResults {
    /// Package length, bytes.
    pub package_bytes: u64,
    /// The agent's downloader.
    pub agent_mb_per_s: Summary,
    /// `curl` on the same URL.
    pub curl_mb_per_s: Summary,
    /// Median agent throughput / median curl throughput.
    pub ratio: f64,
}

/// The package route's answer to an update check, as far as this module needs it.
#[derive(Debug, serde::Deserialize)]
struct Offer {
    update: Option<OfferedUpdate>,
}

#[derive(Debug, serde::Deserialize)]
pub struct OfferedUpdate {
    package_url: String,
    /// The package's length, bytes.
    pub length: u64,
}

/// Publishes a package of about `plan.download_bytes` and downloads it `plan.repeats` times
/// with each client.
pub fn measure(plan: &Plan) -> Result<DownloadResults> {
    let dir = plan.work.join("download");
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let payload = dir.join("payload");
    write_incompressible(&payload, plan.download_bytes)?;
    let mut server = fixture::server(plan, &server_dir).start()?;
    server.publish(&fixture::linux_release(
        "999.0.0",
        &payload,
        &plan.bins.current.updater,
    ))?;
    let token = fixture::register(&server, "bench-download")?;
    let offer = offer(&server, &token)?;
    let (mut agent, mut curl) = (Vec::new(), Vec::new());
    for _ in 0..plan.repeats {
        let secs = with_agent(plan, &server, &offer, &token, &dir.join("agent.zip"))?;
        agent.push(offer.length as f64 / MB / secs);
        let secs = with_curl(&server, &offer, &token, &dir.join("curl.zip"))?;
        curl.push(offer.length as f64 / MB / secs);
    }
    server.stop()?;
    let agent = Summary::of(&agent).context("no downloads")?;
    let curl = Summary::of(&curl).context("no downloads")?;
    Ok(DownloadResults {
        package_bytes: offer.length,
        ratio: agent.median / curl.median,
        agent_mb_per_s: agent,
        curl_mb_per_s: curl,
    })
}

/// What the update check offers an agent on 0.0.1: the published package.
pub fn offer(server: &RunningServer, token: &str) -> Result<OfferedUpdate> {
    let url = format!(
        "{}{}?version=0.0.1&platform=linux-x86_64",
        server.url(),
        cms_protocol::paths::UPDATE_CHECK
    );
    let offer: Offer = server
        .client()
        .get(&url)
        .bearer_auth(token)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .with_context(|| format!("GET {url}"))?;
    offer
        .update
        .context("the server offers no package to download")
}

/// One download through the agent's downloader; seconds, as timed around the call. Over
/// HTTPS it trusts the server's CA.
pub fn with_agent(
    plan: &Plan,
    server: &RunningServer,
    offer: &OfferedUpdate,
    token: &str,
    out: &Path,
) -> Result<f64> {
    let mut command = Command::new(&plan.bins.loadgen);
    command
        .args([
            "download",
            "--server",
            server.url(),
            "--url",
            &offer.package_url,
        ])
        .args(["--length", &offer.length.to_string(), "--out"])
        .arg(out)
        .env("CMS_LOADGEN_TOKEN", token);
    if let Some(ca) = server.ca_file() {
        command.arg("--ca-cert").arg(ca);
    }
    let output = crate::util::output_checked(&mut command)?;
    let result: serde_json::Value = serde_json::from_str(output.trim())
        .with_context(|| format!("{} printed {output:?}", describe(&command)))?;
    if result["bytes"].as_u64() != Some(offer.length) {
        bail!(
            "the agent's downloader got {} bytes, not {}",
            result["bytes"],
            offer.length
        );
    }
    result["secs"]
        .as_f64()
        .context("no secs in the downloader's answer")
}

/// One download with curl; seconds, as curl times the transfer (`time_total`).
fn with_curl(
    server: &RunningServer,
    offer: &OfferedUpdate,
    token: &str,
    out: &Path,
) -> Result<f64> {
    let url = format!("{}{}", server.url(), offer.package_url);
    let mut command = Command::new("curl");
    command
        .args([
            "--config",
            "-",
            "--silent",
            "--show-error",
            "--fail",
            "--output",
        ])
        .arg(out)
        .args(["--write-out", "%{size_download} %{time_total}", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", describe(&command)))?;
    let mut stdin = child.stdin.take().context("curl has no stdin")?;
    writeln!(stdin, "header = \"Authorization: Bearer {token}\"")?;
    drop(stdin);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "curl {url} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.split_whitespace();
    let size: f64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .context("curl printed no size")?;
    if size as u64 != offer.length {
        bail!("curl got {size} bytes, not {}", offer.length);
    }
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .context("curl printed no time")
}

/// Writes `len` pseudo-random bytes (xorshift64*: fast, and deflate cannot shrink them).
pub fn write_incompressible(path: &Path, len: u64) -> Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut written = 0;
    while written < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let take = usize::try_from((len - written).min(8)).unwrap_or(8);
        file.write_all(&word[..take])?;
        written += take as u64;
    }
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_has_the_asked_length_and_does_not_repeat() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("payload");
        write_incompressible(&path, 1_000_003)?;
        let bytes = std::fs::read(&path)?;
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(bytes.len(), 1_000_003);
        assert_ne!(bytes[..4096], bytes[4096..8192]);
        Ok(())
    }
}
