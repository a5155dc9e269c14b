//! TLS against plain HTTP: two servers of the same build on this machine, one serving
//! `http://`, the other `https://` with a certificate of a throwaway CA ([`crate::pki`]), the
//! same release published on both, measured alternately in the same run so both see the same
//! machine state.
//!
//! - Heartbeats: `cms-loadgen heartbeats` registers one agent through the agent's own client
//!   (its TLS stack and trust, `--ca-cert` for the private CA) and sends heartbeats one after
//!   the other on its keep-alive connection, as the agent does; each run gives a p50 and a p99,
//!   and the registration's time (the first request of a new connection: TCP and, over HTTPS,
//!   the TLS handshake included).
//! - Download: the release package through the agent's downloader ([`super::download`]).
//!
//! Nothing here judges: TLS costing something is expected, the report shows how much.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::agent::MB;
use super::download;
use super::fixture;
use super::machine;
use super::plan::Plan;
use super::stats::{self, Summary};
use crate::pki::TestPki;
use crate::server::RunningServer;
use crate::util::{describe, output_checked};

/// One way of reaching the server, measured.
#[derive(Debug, Clone, Serialize)]
pub struct TransportResults {
    /// Heartbeat latency, median of each run's 50th percentile, ms.
    pub heartbeat_p50_ms: Summary,
    /// Heartbeat latency, each run's 99th percentile, ms.
    pub heartbeat_p99_ms: Summary,
    /// The first request of a new connection (registration), ms.
    pub first_request_ms: Summary,
    /// The agent's downloader, MB/s.
    pub download_mb_per_s: Summary,
}

/// Plain HTTP and HTTPS side by side.
#[derive(Debug, Clone, Serialize)]
pub struct TlsResults {
    /// Heartbeats per run.
    pub heartbeats_per_run: u32,
    /// Load average when the phase started (1 / 5 / 15 min).
    pub load_average: String,
    /// Package length, bytes.
    pub package_bytes: u64,
    /// `http://`.
    pub plain: TransportResults,
    /// `https://` (TLS 1.3, ECDSA P-256 certificate, the agent's rustls with aws-lc-rs).
    pub tls: TransportResults,
}

/// What `cms-loadgen heartbeats` prints.
#[derive(Debug, Deserialize)]
struct HeartbeatRun {
    register_us: f64,
    latencies_us: Vec<f64>,
}

/// Samples of one transport, gathered run by run.
#[derive(Debug, Default)]
struct Samples {
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    first_ms: Vec<f64>,
    download_mb_per_s: Vec<f64>,
}

impl Samples {
    fn summarize(&self) -> Result<TransportResults> {
        let of = |samples: &[f64]| Summary::of(samples).context("no samples");
        Ok(TransportResults {
            heartbeat_p50_ms: of(&self.p50_ms)?,
            heartbeat_p99_ms: of(&self.p99_ms)?,
            first_request_ms: of(&self.first_ms)?,
            download_mb_per_s: of(&self.download_mb_per_s)?,
        })
    }
}

/// Both servers, `plan.repeats` rounds of heartbeats and a download on each.
pub fn measure(plan: &Plan) -> Result<TlsResults> {
    let load_average = machine::load_average();
    let dir = plan.work.join("tls");
    std::fs::create_dir_all(&dir)?;
    let pki = TestPki::create(&dir.join("pki"))?;
    let payload = dir.join("payload");
    download::write_incompressible(&payload, plan.download_bytes)?;
    let mut servers = Vec::new();
    for (name, tls) in [("plain", false), ("tls", true)] {
        let data = dir.join(name);
        std::fs::create_dir_all(&data)?;
        let server = fixture::server(plan, &data);
        let server = if tls { server.with_tls(&pki) } else { server };
        let server = server.start()?;
        server.publish(&fixture::linux_release(
            "999.0.0",
            &payload,
            &plan.bins.current.updater,
        ))?;
        servers.push(server);
    }
    let mut samples = [Samples::default(), Samples::default()];
    let mut package_bytes = 0;
    for round in 0..plan.repeats {
        for (server, samples) in servers.iter().zip(samples.iter_mut()) {
            let token = fixture::register(server, &format!("bench-tls-{round}"))?;
            let offer = download::offer(server, &token)?;
            package_bytes = offer.length;
            let out = dir.join("download.zip");
            let secs = download::with_agent(plan, server, &offer, &token, &out)?;
            samples
                .download_mb_per_s
                .push(offer.length as f64 / MB / secs);
            heartbeat_run(plan, server, samples)?;
        }
    }
    for mut server in servers {
        server.stop()?;
    }
    let [plain, tls] = samples;
    let results = TlsResults {
        heartbeats_per_run: plan.heartbeats,
        load_average,
        package_bytes,
        plain: plain.summarize()?,
        tls: tls.summarize()?,
    };
    print(&results);
    Ok(results)
}

/// The comparison in the bench's output (medians, plain HTTP -> HTTPS).
fn print(results: &TlsResults) {
    let (plain, tls) = (&results.plain, &results.tls);
    println!(
        "    heartbeat p50 {:.2} -> {:.2} ms, p99 {:.2} -> {:.2} ms, first request {:.1} -> {:.1} \
         ms, download {:.0} -> {:.0} MB/s (plain HTTP -> HTTPS; load {})",
        plain.heartbeat_p50_ms.median,
        tls.heartbeat_p50_ms.median,
        plain.heartbeat_p99_ms.median,
        tls.heartbeat_p99_ms.median,
        plain.first_request_ms.median,
        tls.first_request_ms.median,
        plain.download_mb_per_s.median,
        tls.download_mb_per_s.median,
        results.load_average
    );
}

/// One `cms-loadgen heartbeats` run against `server`, added to `samples`.
fn heartbeat_run(plan: &Plan, server: &RunningServer, samples: &mut Samples) -> Result<()> {
    let mut command = Command::new(&plan.bins.loadgen);
    command
        .args(["heartbeats", "--server", server.url()])
        .args(["--count", &plan.heartbeats.to_string()]);
    if let Some(ca) = server.ca_file() {
        command.arg("--ca-cert").arg(ca);
    }
    let output = output_checked(&mut command)?;
    let run: HeartbeatRun = serde_json::from_str(output.trim())
        .with_context(|| format!("{} printed {output:?}", describe(&command)))?;
    let ms: Vec<f64> = run.latencies_us.iter().map(|us| us / 1000.0).collect();
    let Some([p50, p99]) = stats::percentiles(&ms, &[50.0, 99.0]).map(|p| [p[0], p[1]]) else {
        bail!("{} timed no heartbeat", describe(&command));
    };
    samples.p50_ms.push(p50);
    samples.p99_ms.push(p99);
    samples.first_ms.push(run.register_us / 1000.0);
    Ok(())
}
