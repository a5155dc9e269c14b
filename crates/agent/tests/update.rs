//! Self-update end to end with real builds (1.0.0 -> 2.0.0 via `CMS_BUILD_VERSION`), the real
//! server's `release publish`, the real updater, and real failures: tampered, truncated and
//! endless packages, a release that never becomes healthy, a short disk, kills at random
//! moments of the update, an exe replaced on disk while it runs, a staging failure retried, a
//! release cut off from the backend, no secret on a command line or in a log across an update,
//! and, through a throttling proxy, `--force` during a download and a download resumed after
//! a kill; an update over HTTPS with a private CA through an authenticating forward proxy; and
//! ten agents updated through a download budget of two (`serve --max-downloads 2`); and deltas
//! through a byte-counting relay: a patch release as a signed delta, an exe changed on disk, a
//! delta tampered in transit, an agent two releases behind.

#![cfg(unix)] // drives Linux builds and signals; the Windows lane runs its own scenarios
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::path::Path;
use std::time::Duration;

use cms_agent::system::process_alive;
use util::forward_proxy::ForwardProxy;
use util::machine::{Machine, journal, wait_for_version};
use util::pki::Pki;
use util::proxy::Proxy;
use util::{
    Server, kill9, lock_record, publish, server_command, server_command_output, versioned_build,
    wait_for,
};

/// A 1.0.0 machine, its server, and the agent running IDLE on 1.0.0.
fn running_1_0_0() -> (Machine, Server) {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.start(&server, "3600");
    wait_for_version(&server, "1.0.0");
    (machine, server)
}

fn agent_log(data: &Path) -> String {
    std::fs::read_to_string(data.join("logs/agent.log")).unwrap_or_default()
}

fn idle_count(data: &Path) -> usize {
    agent_log(data)
        .matches("State transition: STARTING -> IDLE")
        .count()
}

/// Flips one byte in the middle of `package` (tampering in transit or on a mirror); returns the
/// genuine bytes.
fn alter_one_byte(package: &Path) -> Vec<u8> {
    let good = std::fs::read(package).unwrap();
    let mut altered = good.clone();
    altered[good.len() / 2] ^= 0xff;
    std::fs::write(package, &altered).unwrap();
    good
}

fn wait_for_error(server: &Server, kind: &str, needle: &str) -> String {
    wait_for(&format!("a {kind} report mentioning {needle:?}"), || {
        server
            .errors()
            .into_iter()
            .find(|e| e.kind == kind && e.message.contains(needle))
            .map(|e| e.message)
    })
}

/// The `signed.version` of a metadata file the agent keeps in `DATA/tuf/`.
fn trusted_version(data: &Path, file: &str) -> Option<u64> {
    let bytes = std::fs::read(data.join("tuf").join(file)).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["signed"]["version"].as_u64()
}

fn wait_for_pinned_root(data: &Path, version: u64) {
    wait_for(&format!("the agent to pin root version {version}"), || {
        (trusted_version(data, "pinned-root.json") == Some(version)).then_some(())
    });
}

/// `cms-server tuf ARGS` on `server_dir` with a root key folder.
fn tuf(server_dir: &Path, command: &str, root_key_dir: &Path, extra: &[&str]) {
    let root_key_dir = root_key_dir.to_str().unwrap();
    let mut args = vec!["tuf", command, "--root-key-dir", root_key_dir];
    args.extend_from_slice(extra);
    server_command(server_dir, &args);
}

#[test]
fn pushed_release_updates_1_to_2_and_the_updater_cleans_up() {
    let (machine, server) = running_1_0_0();
    machine.publish("2.0.0"); // the running server pushes it over the WebSocket

    wait_for_version(&server, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    wait_for("the new agent to record its version", || {
        (machine.config()["current_version"] == "2.0.0").then_some(())
    });
    assert!(journal(&machine.data).is_none(), "journal left behind");
    let updates = machine.data.join("updates");
    let left: Vec<_> = std::fs::read_dir(&updates)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in updates/: {left:?}");
    assert!(!machine.exe.with_file_name("cms_agent.old").exists());
    let updater_log = std::fs::read_to_string(machine.data.join("logs/updater.log")).unwrap();
    assert!(updater_log.contains("update verified"), "{updater_log}");
    assert!(agent_log(&machine.data).contains("trigger=\"push\""));
}

#[test]
fn a_release_published_while_offline_is_found_without_a_push() {
    let machine = Machine::new("1.0.0");
    machine.publish("2.0.0"); // before the server starts: releases it finds at start are not pushed
    let server = Server::start(&machine.server_dir);
    machine.start(&server, "2");
    wait_for_version(&server, "2.0.0");
    // The first heartbeat's answer offers it, or else the poll finds it.
    let log = agent_log(&machine.data);
    assert!(
        log.contains("trigger=\"heartbeat\"") || log.contains("trigger=\"poll\""),
        "{log}"
    );
    assert!(!log.contains("trigger=\"push\""), "{log}");
}

#[test]
fn altered_truncated_and_endless_packages_are_refused_and_1_0_0_keeps_running() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.publish("2.0.0");
    let package = machine.package("2.0.0");
    let good = alter_one_byte(&package);
    machine.start(&server, "1");
    wait_for_error(&server, "update_failed", "sha256 mismatch");

    std::fs::write(&package, &good[..good.len() - 100]).unwrap();
    wait_for_error(&server, "update_failed", "stopped at");

    let mut endless = good.clone();
    endless.extend(std::iter::repeat_n(0u8, 1 << 20));
    std::fs::write(&package, &endless).unwrap();
    wait_for_error(&server, "update_failed", "exceeded the expected");

    let agents = server.agents();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].version, "1.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 1.0.0");
    assert!(process_alive(lock_record(&machine.data).unwrap().pid));
}

#[test]
fn a_release_that_never_becomes_healthy_is_rolled_back() {
    let (machine, server) = running_1_0_0();

    let broken = machine.server_dir.join("broken_agent");
    std::fs::create_dir_all(&machine.server_dir).unwrap();
    std::fs::write(&broken, "#!/bin/sh\necho 'crashes at start' >&2\nexit 1\n").unwrap();
    let updater = versioned_build("1.0.0").join("updater");
    publish(&machine.server_dir, "3.0.0", &broken, &updater, &[]);

    let message = wait_for_error(&server, "update_rolled_back", "3.0.0");
    assert!(message.contains("exited"), "{message}");
    wait_for_version(&server, "1.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 1.0.0");
    assert_eq!(machine.config()["rolled_back_versions"][0], "3.0.0");
    let updater_log = std::fs::read_to_string(machine.data.join("logs/updater.log")).unwrap();
    assert!(updater_log.contains("rolling back"), "{updater_log}");
}

#[test]
fn short_disk_space_is_reported_and_nothing_is_downloaded() {
    let machine = Machine::new("1.0.0");
    std::fs::create_dir_all(&machine.data).unwrap();
    let server = Server::start(&machine.server_dir);
    let config = serde_json::json!({
        "config_version": 2,
        "server_url": server.url,
        "update_reserve_free_bytes": u64::MAX / 4,
    });
    std::fs::write(machine.data.join("config.json"), config.to_string()).unwrap();
    machine.publish("2.0.0");
    machine.start(&server, "1");
    wait_for_error(&server, "update_failed", "not enough free space");
    let downloaded = std::fs::read_dir(machine.data.join("updates"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(downloaded, 0);
    assert_eq!(server.agents()[0].version, "1.0.0");
}

/// Waits for a random moment of the update: a random time into it (download, verification), or
/// the start of a random updater phase plus a little; says which.
fn kill_moment(rng: &mut fastrand::Rng, data: &Path) -> String {
    use cms_protocol::update::UpdatePhase::{Swapping, Verifying, WaitingForOldAgent};
    let phases = [WaitingForOldAgent, Swapping, Verifying];
    let Some(phase) = rng.choice(phases).filter(|_| rng.bool()) else {
        let delay = rng.u64(0..3000);
        std::thread::sleep(Duration::from_millis(delay));
        return format!("{delay} ms after publish");
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while journal(data).is_none_or(|j| j.phase != phase) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let delay = rng.u64(0..300);
    std::thread::sleep(Duration::from_millis(delay));
    format!("{delay} ms into {phase:?}")
}

/// Kills the agent or the updater at a random moment of an update, many times: after each
/// kill the install path holds a runnable exe and the next start reaches IDLE.
#[test]
fn kill_at_random_moments_never_bricks_the_machine() {
    const TRIALS: usize = 12;
    let mut rng = fastrand::Rng::with_seed(0x00c0_ffee);
    let (mut old, mut new) = (0, 0);
    for trial in 0..TRIALS {
        let machine = Machine::new("1.0.0");
        let server = Server::start(&machine.server_dir);
        machine.start(&server, "3600");
        wait_for_version(&server, "1.0.0");
        machine.publish("2.0.0");

        let kill_updater = rng.bool();
        let moment = kill_moment(&mut rng, &machine.data);
        let victim = if kill_updater {
            journal(&machine.data).map(|j| j.updater_pid)
        } else {
            lock_record(&machine.data).map(|r| r.pid)
        };
        if let Some(pid) = victim {
            kill9(pid);
        }
        std::thread::sleep(Duration::from_millis(300));
        machine.stop_everything();

        let version = machine.exe_version();
        assert!(
            version == "cms_agent 1.0.0" || version == "cms_agent 2.0.0",
            "trial {trial}: exe says {version:?}"
        );
        let idle_before = idle_count(&machine.data);
        machine.start(&server, "3600");
        let reached = wait_for("the next start to reach IDLE", || {
            (idle_count(&machine.data) > idle_before)
                .then(|| lock_record(&machine.data))
                .flatten()
                .map(|r| r.version)
        });
        if reached == "2.0.0" {
            new += 1
        } else {
            old += 1
        }
        let victim = if kill_updater { "updater" } else { "agent" };
        println!("trial {trial}: killed the {victim} {moment} -> next start IDLE on {reached}");
        machine.stop_everything();
    }
    // Straight to the stderr handle: the test harness captures print!/eprint! of passing tests,
    // and this summary belongs in every CI log.
    let summary = format!(
        "fault injection: {TRIALS} trials, {old} ended on 1.0.0, {new} on 2.0.0, 0 bricked\n"
    );
    std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes()).unwrap();
}

/// Server-to-agent pace for the proxy: the debug package (about 24 MB) takes over 40 s at this
/// rate, so the agent is surely still downloading when the test acts.
const SLOW: u64 = 512 * 1024;

/// The path the agent downloads release 2.0.0 for this platform from.
const PACKAGE_2_0_0: &str = "/api/v1/agent/packages/2.0.0/linux-x86_64";

/// Starts a 1.0.0 machine behind a proxy, waits for it to be IDLE, throttles the proxy and
/// publishes 2.0.0 (pushed over the WebSocket, through the proxy).
fn slow_update_to_2_0_0(machine: &Machine, server: &Server) -> Proxy {
    let proxy = Proxy::start(&server.listen_addr());
    machine.start_via(&proxy.url, "3600", &[]);
    wait_for_version(server, "1.0.0");
    proxy.throttle(SLOW);
    machine.publish("2.0.0");
    proxy
}

/// Issue 3: `--force` (and `--stop`) are refused in every UPDATING_* state. The real CLI is run
/// while the real agent downloads a real release: exit 1, the busy message, and the agent
/// neither stops nor drops its update, which completes once the link is fast again.
#[test]
fn force_and_stop_during_a_download_are_refused_and_the_update_still_completes() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    let proxy = slow_update_to_2_0_0(&machine, &server);
    wait_for("--status to say UPDATING_DOWNLOADING", || {
        machine
            .status()
            .contains("state: UPDATING_DOWNLOADING")
            .then_some(())
    });
    let pid = lock_record(&machine.data).unwrap().pid;

    let forced = machine.cli(&["--force", "--status-interval", "2"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert_eq!(forced.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--force refused by the running agent: it is updating itself"),
        "{stderr}"
    );
    let status = machine.status();
    assert!(status.contains("state: UPDATING_"), "{status}");
    assert!(status.contains(&format!("pid: {pid}")), "{status}");
    assert!(agent_log(&machine.data).contains("force restart refused: an update is in progress"));
    let stopped = machine.cli(&["--stop"]);
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--stop refused by the running agent: it is updating itself"),
        "{stderr}"
    );
    wait_for("the refused --stop in agent.log", || {
        agent_log(&machine.data)
            .contains("stop refused: an update is in progress")
            .then_some(())
    });
    assert!(machine.status().contains("state: UPDATING_"));

    proxy.unthrottle();
    wait_for_version(&server, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    assert!(
        !process_alive(pid),
        "the 1.0.0 agent handed over to the updater"
    );
    let log = agent_log(&machine.data);
    assert!(!log.contains("force restart requested over IPC"), "{log}");
    assert!(!log.contains("stop requested over IPC"), "{log}");
    let downloads = proxy
        .requests()
        .iter()
        .filter(|r| r.path() == PACKAGE_2_0_0)
        .count();
    assert_eq!(
        downloads, 1,
        "the package came through the throttled proxy, once"
    );
}

/// Issue 4: a download cut by a kill resumes after the restart with `Range: bytes=N-`, N being
/// what the killed agent had written; only the rest is transferred and the package verifies.
#[test]
fn a_download_cut_by_a_kill_resumes_from_the_partial_file_after_restart() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    let proxy = slow_update_to_2_0_0(&machine, &server);
    let part = machine
        .data
        .join("updates/cms_agent-2.0.0-linux-x86_64.zip.part");
    let part_len = || std::fs::metadata(&part).map_or(0, |m| m.len());
    wait_for("256 KiB of the package on disk", || {
        (part_len() >= 256 * 1024).then_some(())
    });
    let pid = lock_record(&machine.data).unwrap().pid;
    kill9(pid);
    wait_for("the killed agent to be gone", || {
        (!process_alive(pid)).then_some(())
    });
    let kept = part_len();
    let package_len = std::fs::metadata(machine.package("2.0.0")).unwrap().len();
    assert!(
        kept > 0 && kept < package_len,
        "kept {kept} of {package_len}"
    );

    proxy.unthrottle();
    let sent_before = proxy.bytes_to_client();
    machine.start_via(&proxy.url, "1", &[]); // no push for a release already out: the poll finds it
    wait_for_version(&server, "2.0.0");
    let sent_after_restart = proxy.bytes_to_client() - sent_before;

    let ranges: Vec<Option<String>> = proxy
        .requests()
        .iter()
        .filter(|r| r.path() == PACKAGE_2_0_0)
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={kept}-"))]);
    assert!(
        sent_after_restart < package_len,
        "{sent_after_restart} bytes sent after the restart: the whole package ({package_len}) again"
    );
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    assert!(agent_log(&machine.data).contains("package verified"));
}

/// What `DATA/updates/` holds (nothing once a refused update is cleaned up): each file's name
/// and length, sorted by name.
fn downloads(data: &Path) -> Vec<(std::ffi::OsString, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(data.join("updates"))
        .map(|d| {
            d.map(|e| e.unwrap())
                .map(|e| (e.file_name(), e.metadata().unwrap().len()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Issue 4, freeze attack: a server (or a mirror) that stops signing keeps serving a timestamp
/// whose every signature is good but whose time is up. The agent refuses it and downloads
/// nothing; once the server signs a fresh timestamp (a restart re-signs one past half its
/// life), the same release installs.
#[test]
fn expired_metadata_is_refused_until_the_server_signs_it_again() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir); // no release yet: nothing to re-sign
    machine.publish_with("2.0.0", &["--timestamp-expiry-secs", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    machine.start(&server, "1"); // after the publish: no push, the poll finds it

    let message = wait_for_error(&server, "update_failed", "timestamp metadata is expired");
    assert!(message.contains("while verifying"), "{message}");
    assert_eq!(server.agents()[0].version, "1.0.0");
    assert!(downloads(&machine.data).is_empty());

    let address = server.listen_addr();
    server.stop();
    let server = Server::start_on(&machine.server_dir, &address);
    wait_for_version(&server, "2.0.0");
}

/// Issue 4, rollback and endless-data attacks: once the agent has verified timestamp version
/// 2, an older signed timestamp (version 1, replayed by a mirror or a man in the middle) is
/// refused although it is genuine and unexpired, even after a restart (what the agent trusts
/// persists in `tuf/`); so is the current timestamp padded past the size limit. Nothing is
/// downloaded meanwhile, and the current metadata is then accepted.
#[test]
fn replayed_older_and_oversized_metadata_are_refused() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.publish("2.0.0"); // timestamp version 1
    let replayed = std::fs::read(machine.timestamp_metadata()).unwrap();
    // Version 2 lists 2.0.0 for Windows too; the Linux agent is offered the same package.
    machine.publish_with("2.0.0", &["--platform", "windows-x86_64"]);
    let current = std::fs::read(machine.timestamp_metadata()).unwrap();
    // The agent verifies version 2, then refuses the package: a tampered copy.
    let package = machine.package("2.0.0");
    let good = alter_one_byte(&package);
    machine.start(&server, "1");
    wait_for_error(&server, "update_failed", "sha256 mismatch");

    machine.stop_everything();
    // A retry of the tampered download, killed here, may leave its partial file to resume.
    let left_by_the_kill = downloads(&machine.data);
    std::fs::write(machine.timestamp_metadata(), &replayed).unwrap();
    std::fs::write(&package, &good).unwrap();
    machine.start(&server, "1");
    let message = wait_for_error(&server, "update_failed", "Found version 1 of timestamp");
    assert!(
        message.contains("previously fetched version 2"),
        "{message}"
    );

    let mut padded = current.clone();
    padded.extend(std::iter::repeat_n(b' ', 128 * 1024)); // still valid JSON
    std::fs::write(machine.timestamp_metadata(), &padded).unwrap();
    wait_for_error(&server, "update_failed", "max_timestamp_size");
    assert_eq!(server.agents()[0].version, "1.0.0");
    assert_eq!(downloads(&machine.data), left_by_the_kill);

    std::fs::write(machine.timestamp_metadata(), &current).unwrap();
    wait_for_version(&server, "2.0.0");
}

/// Issue 4: with `--trusted-root` the agent trusts that root and no other: metadata signed by
/// keys it does not name (another server's, or an impostor's) is refused, and trust on first
/// use never replaces a root that was given.
#[test]
fn metadata_not_signed_by_the_given_root_is_refused() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.publish("2.0.0");
    let impostor = machine.server_dir.with_file_name("impostor");
    let build = versioned_build("2.0.0");
    let (agent, updater) = (build.join("cms_agent"), build.join("updater"));
    publish(&impostor, "2.0.0", &agent, &updater, &[]); // its own keys and root
    let foreign_root = impostor.join("tuf/metadata/root.json");

    let root_arg = foreign_root.to_str().unwrap();
    machine.start_via(&server.url, "1", &["--trusted-root", root_arg]);
    let message = wait_for_error(&server, "update_failed", "signed release metadata refused");
    assert!(message.contains("timestamp"), "{message}");
    assert_eq!(server.agents()[0].version, "1.0.0");
    assert!(downloads(&machine.data).is_empty());
    let pinned = machine.data.join("tuf/pinned-root.json");
    assert_eq!(
        std::fs::read(pinned).unwrap(),
        std::fs::read(foreign_root).unwrap()
    );
}

#[test]
fn an_update_over_https_with_a_private_ca_goes_through_an_authenticating_proxy() {
    let machine = Machine::new("1.0.0");
    let scratch = machine.server_dir.with_file_name("scratch");
    let pki = Pki::new(&scratch.join("pki"));
    let cert = pki.server_cert("server", &["localhost", "127.0.0.1"], (-1, 365), false);
    let tls = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    let server = Server::start_with(&machine.server_dir, &tls, Some(&pki.root_pem));
    let proxy = ForwardProxy::start(&scratch.join("proxy"), "agent", "upd4te-pass");
    let ca = pki.ca_file();
    let proxy_url = format!("http://agent:upd4te-pass@{}", proxy.addr);
    let extra = ["--ca-cert", ca.to_str().unwrap(), "--proxy", &proxy_url];
    machine.start_via(&server.url, "3600", &extra);
    wait_for_version(&server, "1.0.0");
    machine.publish("2.0.0"); // pushed over WSS, downloaded over HTTPS, both through the proxy

    let listed = wait_for_version(&server, "2.0.0");
    assert_eq!(
        listed.network.as_deref(),
        Some("explicit proxy"),
        "the route operators see"
    );
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    let server_port = server.listen_addr();
    let tunnels = proxy
        .log()
        .matches(&format!("CONNECT {server_port}"))
        .count();
    // 1.0.0's HTTP and WebSocket, and 2.0.0's WebSocket (which carries its heartbeats).
    assert!(
        tunnels >= 3,
        "HTTP and WebSocket tunnelled: {}",
        proxy.log()
    );
    assert!(!agent_log(&machine.data).contains("upd4te-pass"));
    let updater_log = std::fs::read_to_string(machine.data.join("logs/updater.log")).unwrap();
    assert!(!updater_log.contains("upd4te-pass"), "{updater_log}");
}

/// A package manager renames a new file over the running exe (Linux then names the running one
/// `cms_agent (deleted)`); the next self-update still installs at the install path and leaves
/// an agent running.
#[test]
fn an_exe_replaced_while_running_is_updated_at_its_install_path() {
    let (machine, server) = running_1_0_0();
    let fresh = machine.exe.with_file_name("cms_agent.dpkg-new");
    std::fs::copy(versioned_build("1.0.0").join("cms_agent"), &fresh).unwrap();
    std::fs::rename(&fresh, &machine.exe).unwrap();
    let pid = lock_record(&machine.data).unwrap().pid;
    let running = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        running.to_string_lossy().ends_with(" (deleted)"),
        "{running:?}"
    );

    machine.publish("2.0.0");
    wait_for_version(&server, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    assert!(process_alive(lock_record(&machine.data).unwrap().pid));
    assert!(
        !machine
            .exe
            .with_file_name("cms_agent (deleted).old")
            .exists()
    );
}

/// Staging fails (here a folder where `<exe>.new` must go, as a file an antivirus holds past
/// the retries would): the updater starts the old agent again, the version is not refused for
/// good, and the retry after the backoff installs it.
#[test]
fn a_staging_failure_is_retried_and_the_retry_succeeds() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    std::fs::create_dir_all(&machine.data).unwrap();
    let config = serde_json::json!({
        "config_version": 2,
        "server_url": server.url,
        "intervals": { "update_retry_secs": 2 },
    });
    std::fs::write(machine.data.join("config.json"), config.to_string()).unwrap();
    let blocker = machine.exe.with_file_name("cms_agent.new");
    std::fs::create_dir(&blocker).unwrap();
    machine.start(&server, "3600");
    wait_for_version(&server, "1.0.0");
    machine.publish("2.0.0");

    let message = wait_for_error(&server, "update_aborted", "2.0.0");
    assert!(message.contains("cannot stage the new agent"), "{message}");
    assert!(message.contains("trying again in"), "{message}");
    std::fs::remove_dir(&blocker).unwrap();
    wait_for_version(&server, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    assert!(machine.config()["rolled_back_versions"].is_null());
    wait_for("the aborted attempt to be forgotten once installed", || {
        machine.config()["update_retry"].is_null().then_some(())
    });
}

/// The new release runs but cannot reach the backend (the network to it is cut as the updater
/// starts): the old agent could, so the updater rolls back instead of calling it healthy, and
/// the old agent, back online, reports why.
#[test]
fn a_release_that_cannot_reach_the_backend_is_rolled_back() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    let proxy = Proxy::start(&server.listen_addr());
    machine.start_via(&proxy.url, "3600", &[]);
    wait_for_version(&server, "1.0.0");
    wait_for("the old agent's backend contact", || {
        machine
            .data
            .join("backend-contact.json")
            .exists()
            .then_some(())
    });
    machine.publish("2.0.0");
    wait_for("the updater to start", || journal(&machine.data));
    proxy.cut_off();

    let updater_log = || std::fs::read_to_string(machine.data.join("logs/updater.log"));
    wait_for("the rollback", || {
        updater_log()
            .is_ok_and(|log| log.contains("rolling back"))
            .then_some(())
    });
    proxy.reconnect();
    let message = wait_for_error(&server, "update_rolled_back", "2.0.0");
    assert!(
        message.contains("heartbeat accepted by the backend"),
        "{message}"
    );
    assert_eq!(machine.exe_version(), "cms_agent 1.0.0");
    assert_eq!(machine.config()["rolled_back_versions"][0], "2.0.0");
    let record = lock_record(&machine.data).unwrap();
    assert_eq!(record.version, "1.0.0");
    assert!(process_alive(record.pid));
}

/// Bytes of `/proc/PID/<file>` (the command line, the environment).
fn proc_file(pid: u32, file: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{file}")).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// An agent enrolled with a token updates itself: the token is on no command line and in no
/// environment of the new agent and in no log (the agent's and the updater's), config.json and
/// logs/ are private, and the token kept in config.json enrolls the agent again after the
/// server lost its database.
#[test]
fn no_secret_on_a_command_line_or_in_a_log_across_an_update() {
    const TOKEN: &str = "enroll-5f0c9a71-do-not-leak";
    let machine = Machine::new("1.0.0");
    let token_arg = ["--enrollment-token", TOKEN];
    let server = Server::start_with(
        &machine.server_dir,
        &["--listen", "127.0.0.1:0", token_arg[0], token_arg[1]],
        None,
    );
    let agent_args = ["--enrollment-token", TOKEN, "--status-interval", "1"];
    machine.start_via(&server.url, "3600", &agent_args);
    wait_for_version(&server, "1.0.0");
    machine.publish("2.0.0");
    wait_for_version(&server, "2.0.0");

    let record = lock_record(&machine.data).unwrap();
    assert_eq!(record.version, "2.0.0");
    assert!(!contains(&proc_file(record.pid, "cmdline"), TOKEN));
    assert!(!contains(&proc_file(record.pid, "environ"), TOKEN));
    let config = machine.config();
    assert_eq!(
        config["enrollment_token"], TOKEN,
        "kept for a re-enrollment"
    );
    let agent_token = config["credentials"]["agent_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = machine.data.join("logs");
    for entry in std::fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read(&path).unwrap();
        assert!(
            !contains(&text, TOKEN),
            "enrollment token in {}",
            path.display()
        );
        assert!(
            !contains(&text, &agent_token),
            "credential in {}",
            path.display()
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&machine.data.join("config.json")), 0o600);
    assert_eq!(mode(&logs), 0o700);

    let listen = server.listen_addr();
    server.stop();
    let reset = machine.server_dir.with_file_name("server-after-reset");
    let server = Server::start_with(
        &reset,
        &["--listen", &listen, token_arg[0], token_arg[1]],
        None,
    );
    wait_for_version(&server, "2.0.0");
}

#[test]
fn a_rotated_root_key_and_new_online_keys_are_followed_to_the_next_update() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.start(&server, "3600");
    wait_for_version(&server, "1.0.0");
    wait_for_pinned_root(&machine.data, 1);
    let keys = machine.server_dir.with_file_name("root-keys");
    let (old, new) = (keys.join("old"), keys.join("new"));
    tuf(&machine.server_dir, "offline-root", &old, &[]);
    assert!(!machine.server_dir.join("tuf/keys/root.pk8").exists());
    let new_dir = new.to_str().unwrap();
    let extra = ["--new-root-key-dir", new_dir, "--rotate-online-keys"];
    tuf(&machine.server_dir, "rotate-root", &old, &extra);

    machine.publish("2.0.0"); // signed by online keys only root version 2 names
    wait_for_version(&server, "2.0.0");
    assert_eq!(trusted_version(&machine.data, "pinned-root.json"), Some(2));
}

#[test]
fn a_lost_server_data_directory_is_rebuilt_from_the_offline_root_key() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    let listen = server.listen_addr();
    machine.start_via(&server.url, "1", &["--status-interval", "1"]);
    wait_for_version(&server, "1.0.0");
    wait_for_pinned_root(&machine.data, 1);
    let root_keys = machine.server_dir.with_file_name("root-key");
    tuf(&machine.server_dir, "offline-root", &root_keys, &[]);
    // The agent learns the server's metadata counters (timestamp version 2) from two
    // releases whose offered package is altered, so it stays on 1.0.0.
    machine.publish("2.0.0");
    alter_one_byte(&machine.package("2.0.0"));
    wait_for_error(&server, "update_failed", "sha256 mismatch");
    let old = versioned_build("1.0.0");
    let (agent, updater) = (old.join("cms_agent"), old.join("updater"));
    publish(&machine.server_dir, "1.5.0", &agent, &updater, &[]);
    wait_for("the agent to trust timestamp version 2", || {
        trusted_version(&machine.data, "timestamp.json")
            .is_some_and(|v| v >= 2)
            .then_some(())
    });

    // The server's data directory is lost: database, packages, online keys.
    server.stop();
    std::fs::remove_dir_all(&machine.server_dir).unwrap();
    tuf(&machine.server_dir, "recover", &root_keys, &[]);
    let server = Server::start_on(&machine.server_dir, &listen);
    machine.publish("2.0.0"); // timestamp version 1 again, under new keys root 2 names
    wait_for_version(&server, "2.0.0");
    assert_eq!(trusted_version(&machine.data, "pinned-root.json"), Some(2));
    assert!(agent_log(&machine.data).contains("registering again"));
}

/// `cms-server group pin --group default --version VERSION EXTRA` on the machine's server:
/// exit code, stdout and stderr.
fn pin(machine: &Machine, version: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["group", "pin", "--group", "default", "--version", version];
    args.extend_from_slice(extra);
    let output = server_command_output(&machine.server_dir, &args);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// Runs `sql` on the server's SQLite database, as an attacker holding the database would.
fn tamper_with_database(server_dir: &Path, sql: &'static str) {
    let url = format!("sqlite://{}", server_dir.join("cms-server.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let done = sqlx::query(sql).execute(&mut db).await.unwrap();
        assert_eq!(done.rows_affected(), 1, "{sql}");
    });
}

/// A group pinned to an older release goes back to it through the updater, allowed by a
/// statement signed with the offline root key; the online keys cannot sign one, and the
/// database alone (a pin without the statement) is refused by the agent itself.
#[test]
fn a_pin_to_an_older_release_rolls_back_with_the_root_key_only() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.publish("1.0.0");
    machine.start_via(&server.url, "2", &["--status-interval", "1"]);
    wait_for_version(&server, "1.0.0");
    wait_for_pinned_root(&machine.data, 1);
    let root_keys = machine.server_dir.with_file_name("root-key");
    tuf(&machine.server_dir, "offline-root", &root_keys, &[]);
    machine.publish("2.0.0");
    wait_for_version(&server, "2.0.0");

    // Without the root key, or with an online key posing as it, the pin is refused.
    let (code, _, stderr) = pin(&machine, "1.0.0", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs the root key"), "{stderr}");
    let forged = machine.server_dir.with_file_name("forged-root-key");
    std::fs::create_dir_all(&forged).unwrap();
    let targets_key = machine.server_dir.join("tuf/keys/targets.pk8");
    std::fs::copy(targets_key, forged.join("root.pk8")).unwrap();
    let forged = forged.to_str().unwrap();
    let (code, _, stderr) = pin(&machine, "1.0.0", &["--root-key-dir", forged]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("not this repository's root key"),
        "{stderr}"
    );

    // With it: the agent goes back to 1.0.0 through the verified path and the updater.
    let root_keys = root_keys.to_str().unwrap();
    let (code, printed, stderr) = pin(&machine, "1.0.0", &["--root-key-dir", root_keys]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(printed.contains("\"rollback\":true"), "{printed}");
    wait_for_version(&server, "1.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 1.0.0");
    let log = agent_log(&machine.data);
    assert!(
        log.contains("allowed by a statement signed with the root key"),
        "{log}"
    );

    // Unpinned, it follows the rollout up again.
    server_command(
        &machine.server_dir,
        &["group", "unpin", "--group", "default"],
    );
    wait_for_version(&server, "2.0.0");

    // The database alone: a pin to 1.0.0 whose statement is gone is offered, and refused.
    let (code, _, stderr) = pin(&machine, "1.0.0", &["--root-key-dir", root_keys]);
    assert_eq!(code, Some(0), "{stderr}");
    tamper_with_database(
        &machine.server_dir,
        "UPDATE group_pins SET rollback = NULL WHERE agent_group = 'default'",
    );
    let message = wait_for_error(&server, "update_failed", "no rollback statement");
    assert!(message.contains("1.0.0"), "{message}");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
}

/// Polls `probe` like `wait_for`, for up to `secs` (a fleet's update takes longer than one
/// agent's).
fn wait_long<T>(what: &str, secs: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many agents are IDLE and online on `version`.
fn on_version(server: &Server, version: &str) -> usize {
    let agents = server.agents();
    agents
        .iter()
        .filter(|a| a.version == version && a.state == "IDLE" && a.online)
        .count()
}

/// The server's `/healthz` answer.
fn server_health(server: &Server) -> serde_json::Value {
    let health = reqwest::blocking::get(format!("{}/healthz", server.url)).unwrap();
    health.json().unwrap()
}

/// The server's download budget as `/healthz` shows it.
fn download_counts(server: &Server) -> serde_json::Value {
    server_health(server)["downloads"].clone()
}

/// Agents in the fleet test; the server sends two packages at a time.
const FLEET: usize = 10;

/// Issue 27: `serve --max-downloads 2 --max-waiting-checks 0` and ten agents pushed 2.0.0 at
/// once, through a proxy that makes each download take about two seconds: the server never
/// sends more than two packages at a time (its own peak count, from `/healthz`), the others are
/// answered 503 and wait (nothing is reported failed), and all ten end on a verified 2.0.0.
/// Update checks past the two turns are refused too (how many depends on timing: each agent so
/// refused logs its wait and asks again, and none reports a failed check). Half of them run
/// with `--download-limit` (a generous one: the rate is not timed here), saved and shown by
/// `--status`.
#[test]
fn a_download_budget_of_two_serves_ten_agents_two_at_a_time() {
    let machines: Vec<Machine> = (0..FLEET).map(|_| Machine::new("1.0.0")).collect();
    let server_dir = &machines[0].server_dir;
    let listen = [
        "--listen",
        "127.0.0.1:0",
        "--max-downloads",
        "2",
        "--max-waiting-checks",
        "0",
    ];
    let server = Server::start_with(server_dir, &listen, None);
    let proxy = Proxy::start(&server.listen_addr());
    for (i, machine) in machines.iter().enumerate() {
        let limit: &[&str] = if i % 2 == 0 {
            &["--download-limit", "1000000"]
        } else {
            &[]
        };
        machine.start_via(&proxy.url, "3600", limit);
    }
    wait_long("ten IDLE agents on 1.0.0", 120, || {
        (on_version(&server, "1.0.0") == FLEET).then_some(())
    });
    let limited = &machines[0];
    assert_eq!(limited.config()["download_limit_kbps"], 1_000_000);
    assert!(machines[1].config().get("download_limit_kbps").is_none());
    let status = limited.status();
    assert!(status.contains("download limit: 1000000 KiB/s"), "{status}");
    assert!(machines[1].status().contains("download limit: none"));

    // About two seconds per package (the debug one is about 24 MB), so the pushes surely
    // overlap and the budget is what spaces the downloads.
    proxy.throttle(12 * 1024 * 1024);
    limited.publish("2.0.0");
    wait_long("ten IDLE agents on 2.0.0", 300, || {
        (on_version(&server, "2.0.0") == FLEET).then_some(())
    });

    let counts = download_counts(&server);
    eprintln!("download budget after the fleet's update: {counts}");
    let peak = counts["peak"].as_u64().unwrap();
    assert!((1..=2).contains(&peak), "{counts}");
    assert!(counts["refused"].as_u64().unwrap() > 0, "{counts}");
    assert_eq!(counts["active"], 0, "{counts}");
    let failed: Vec<_> = server
        .errors()
        .into_iter()
        .filter(|e| e.kind == "update_failed" || e.kind == "update_check_failed")
        .map(|e| e.message)
        .collect();
    assert!(
        failed.is_empty(),
        "a busy server is not a failure: {failed:?}"
    );
    let waited = machines
        .iter()
        .filter(|m| agent_log(&m.data).contains("the server is busy; waiting before resuming"))
        .count();
    assert!(waited > 0, "some agent waited for a slot");
    let checks = server_health(&server)["update_checks"].clone();
    let checks_refused = checks["refused"].as_u64().unwrap();
    let asked_again = machines
        .iter()
        .filter(|m| agent_log(&m.data).contains("update check: the server is busy"))
        .count();
    eprintln!("update checks: {checks}; {asked_again} agents asked again");
    assert_eq!(checks_refused > 0, asked_again > 0, "{checks}");
    assert!(asked_again as u64 <= checks_refused, "{checks}");
    for machine in &machines {
        assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    }
}

/// Issue 27: a push to more agents than `--push-checks-per-sec` asks them to spread their
/// checks: with a rate of one a second, three agents are told to check within 3 s, each waits
/// a random part of it (logged) instead of checking at once, and all three end on 2.0.0.
#[test]
fn a_push_to_more_agents_than_the_rate_spreads_their_checks() {
    let machines: Vec<Machine> = (0..3).map(|_| Machine::new("1.0.0")).collect();
    let server_dir = &machines[0].server_dir;
    let listen = ["--listen", "127.0.0.1:0", "--push-checks-per-sec", "1"];
    let server = Server::start_with(server_dir, &listen, None);
    for machine in &machines {
        machine.start_via(&server.url, "3600", &[]);
    }
    wait_long("three IDLE agents on 1.0.0 on their WebSockets", 60, || {
        let connected = machines
            .iter()
            .all(|m| agent_log(&m.data).contains("websocket connected"));
        (connected && on_version(&server, "1.0.0") == machines.len()).then_some(())
    });
    machines[0].publish("2.0.0");
    wait_long("three IDLE agents on 2.0.0", 120, || {
        (on_version(&server, "2.0.0") == machines.len()).then_some(())
    });
    for machine in &machines {
        let log = agent_log(&machine.data);
        let spread = log
            .lines()
            .find(|l| l.contains("checking at a random moment of the push's spread"))
            .unwrap_or_else(|| panic!("no spread push in the agent's log:\n{log}"));
        assert!(spread.contains("spread_secs=3"), "{spread}");
        assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    }
}

/// The server's record of an agent's update events (`update_events.detail`), oldest first.
fn update_event_details(server_dir: &Path) -> Vec<String> {
    let url = format!("sqlite://{}", server_dir.join("cms-server.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, String>(
            "SELECT detail FROM update_events WHERE detail IS NOT NULL ORDER BY received_at",
        )
        .fetch_all(&mut db)
        .await
        .unwrap()
    })
}

/// A 1.0.0 machine behind a byte-counting relay, its server with 1.0.0 published, the agent
/// IDLE on 1.0.0.
fn on_1_0_0_behind_a_relay(machine: &Machine) -> (Server, Proxy) {
    let server = Server::start(&machine.server_dir);
    machine.publish("1.0.0");
    let proxy = Proxy::start(&server.listen_addr());
    machine.start_via(&proxy.url, "3600", &[]);
    wait_for_version(&server, "1.0.0");
    (server, proxy)
}

/// Publishes 2.0.0 with deltas and waits until the machine runs exactly the released 2.0.0.
fn publish_2_0_0_with_deltas(machine: &Machine, server: &Server) {
    machine.publish_with("2.0.0", &["--delta-from", "3"]);
    wait_for_version(server, "2.0.0");
    assert_installed_is_released(machine, "2.0.0");
}

/// [`on_1_0_0_behind_a_relay`], then [`publish_2_0_0_with_deltas`].
fn update_1_to_2_with_deltas(machine: &Machine) -> (Server, Proxy) {
    let (server, proxy) = on_1_0_0_behind_a_relay(machine);
    publish_2_0_0_with_deltas(machine, &server);
    (server, proxy)
}

/// The installed exe is byte for byte the released build of `version`.
fn assert_installed_is_released(machine: &Machine, version: &str) {
    assert_eq!(machine.exe_version(), format!("cms_agent {version}"));
    let released = std::fs::read(versioned_build(version).join("cms_agent")).unwrap();
    assert!(
        std::fs::read(&machine.exe).unwrap() == released,
        "the installed exe is not the released {version}"
    );
}

/// The paths the relay saw requested, in order.
fn requested_paths(proxy: &Proxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect()
}

/// The updater's log says the new version passed its health check.
fn wait_for_verified_update(machine: &Machine) {
    wait_for("the updater to call the update verified", || {
        let log = std::fs::read_to_string(machine.data.join("logs/updater.log")).ok()?;
        log.contains("update verified").then_some(())
    });
}

fn wait_for_transfer(machine: &Machine, needle: &str) -> String {
    wait_for(&format!("an update event saying {needle}"), || {
        update_event_details(&machine.server_dir)
            .into_iter()
            .find(|d| d.contains(needle))
    })
}

/// Issue 27: a patch release travels as a signed delta: the agent fetches the delta (the relay
/// counts a small fraction of the package), rebuilds the signed package, ends on a verified
/// 2.0.0, and reports `transfer: delta`.
#[test]
fn a_patch_release_travels_as_a_signed_delta() {
    let machine = Machine::new("1.0.0");
    let (_server, proxy) = update_1_to_2_with_deltas(&machine);
    let package = std::fs::metadata(machine.package("2.0.0")).unwrap().len();
    let delta = machine
        .server_dir
        .join("deltas/linux-x86_64/2.0.0/1.0.0.delta");
    let delta_length = std::fs::metadata(&delta).unwrap().len();
    let detail = wait_for_transfer(&machine, "transfer: delta");
    assert!(
        detail.contains(&format!("{delta_length} bytes")),
        "{detail}"
    );
    let paths = requested_paths(&proxy);
    assert!(
        paths
            .iter()
            .any(|p| p == "/api/v1/agent/deltas/1.0.0/2.0.0/linux-x86_64"),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.contains("/packages/")), "{paths:?}");
    let sent = proxy.bytes_to_client();
    eprintln!("package {package} bytes, delta {delta_length} bytes, relayed {sent} bytes");
    assert!(
        sent < package / 4,
        "relayed {sent} bytes of a {package}-byte package"
    );
    wait_for_verified_update(&machine);
}

/// Issue 27: an installed exe that is not the released one (changed on disk) cannot rebuild
/// the signed package from a delta: the agent takes the full package, verified, and reports
/// `transfer: full`.
#[test]
fn an_exe_changed_on_disk_gets_the_full_package_instead_of_the_delta() {
    let machine = Machine::new("1.0.0");
    let mut exe = std::fs::OpenOptions::new()
        .append(true)
        .open(&machine.exe)
        .unwrap();
    std::io::Write::write_all(&mut exe, b"changed here").unwrap();
    drop(exe);
    let (_server, proxy) = update_1_to_2_with_deltas(&machine);
    let package = std::fs::metadata(machine.package("2.0.0")).unwrap().len();
    let detail = wait_for_transfer(&machine, "transfer: full");
    assert!(detail.contains(&format!("{package} bytes")), "{detail}");
    let paths = requested_paths(&proxy);
    assert!(
        paths
            .iter()
            .any(|p| p == "/api/v1/agent/packages/2.0.0/linux-x86_64"),
        "{paths:?}"
    );
    assert!(
        agent_log(&machine.data).contains("delta not usable"),
        "{}",
        agent_log(&machine.data)
    );
    assert!(proxy.bytes_to_client() >= package);
}

/// Issue 27: a delta altered on its way (one byte flipped by the relay) does not pass its
/// signed SHA-256: the agent drops it, takes the full package, verified, reports
/// `transfer: full`, and installs exactly the released 2.0.0.
#[test]
fn a_delta_tampered_in_transit_gives_way_to_the_full_package() {
    let machine = Machine::new("1.0.0");
    let (server, proxy) = on_1_0_0_behind_a_relay(&machine);
    proxy.tamper("/api/v1/agent/deltas/");
    publish_2_0_0_with_deltas(&machine, &server);
    let package = std::fs::metadata(machine.package("2.0.0")).unwrap().len();
    let detail = wait_for_transfer(&machine, "transfer: full");
    assert!(detail.contains(&format!("{package} bytes")), "{detail}");
    let paths = requested_paths(&proxy);
    let delta = paths
        .iter()
        .position(|p| p == "/api/v1/agent/deltas/1.0.0/2.0.0/linux-x86_64");
    let full = paths
        .iter()
        .position(|p| p == "/api/v1/agent/packages/2.0.0/linux-x86_64");
    assert!(
        matches!((delta, full), (Some(d), Some(f)) if d < f),
        "the delta first, then the package: {paths:?}"
    );
    let log = agent_log(&machine.data);
    assert!(log.contains("delta not usable"), "{log}");
    wait_for_verified_update(&machine);
}

/// Issue 27: an agent that was off while two releases were published (1.5.0, then 2.0.0)
/// gets the delta from its own version, not from the release before the newest. 1.5.0 is
/// never installed here, so its package holds the 2.0.0 build: its delta cannot rebuild 2.0.0
/// from a 1.0.0 exe, and taking it would end on the full package instead.
#[test]
fn an_agent_two_releases_behind_gets_the_delta_from_its_own_version() {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.publish("1.0.0");
    let build = versioned_build("2.0.0");
    let deltas = ["--delta-from", "3"];
    let (agent, updater) = (build.join("cms_agent"), build.join("updater"));
    publish(&machine.server_dir, "1.5.0", &agent, &updater, &deltas);
    machine.publish_with("2.0.0", &deltas);
    let deltas_dir = machine.server_dir.join("deltas/linux-x86_64/2.0.0");
    for from in ["1.0.0", "1.5.0"] {
        let delta = deltas_dir.join(format!("{from}.delta"));
        assert!(
            delta.is_file(),
            "no delta from {from} at {}",
            delta.display()
        );
    }
    let proxy = Proxy::start(&server.listen_addr());
    machine.start_via(&proxy.url, "3600", &[]);
    wait_for_version(&server, "2.0.0");
    assert_installed_is_released(&machine, "2.0.0");
    wait_for_transfer(&machine, "transfer: delta");
    let paths = requested_paths(&proxy);
    let deltas_fetched: Vec<&String> = paths.iter().filter(|p| p.contains("/deltas/")).collect();
    assert_eq!(
        deltas_fetched,
        ["/api/v1/agent/deltas/1.0.0/2.0.0/linux-x86_64"],
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.contains("/packages/")), "{paths:?}");
    wait_for_verified_update(&machine);
}
