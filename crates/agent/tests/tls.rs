//! HTTPS and WSS with a private CA, and the way through an authenticating forward proxy, with
//! real processes only: `cms-server serve --tls-cert/--tls-key`, `cms_agent --ca-cert/--proxy`,
//! certificates made in the test (a root, an intermediate, ECDSA and RSA leaves), and Debian's
//! tinyproxy requiring Basic authentication.

#![cfg(unix)] // the proxy and the certificates' files are driven from Linux; Wine has its own lane
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::path::Path;

use util::forward_proxy::ForwardProxy;
use util::pki::{Pki, ServerCert, self_signed_server_cert};
use util::{Agent, Server, wait_for};

/// Names every good server certificate carries: the agent connects to 127.0.0.1.
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Valid from yesterday for a year.
const VALID: (i64, i64) = (-1, 365);

fn tls_server(dir: &Path, cert: &ServerCert, pki: &Pki) -> Server {
    let (cert, key) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    let server = Server::start_with(&dir.join("server"), &args, Some(&pki.root_pem));
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server
}

/// The `network_problem` report the agent sends once it gets through.
fn network_problem_report(server: &Server) -> cms_protocol::StoredError {
    wait_for("the network problem report", || {
        server
            .errors()
            .into_iter()
            .find(|e| e.kind == "network_problem")
    })
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn a_private_ca_carries_registration_heartbeats_and_the_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let cert = pki.server_cert("server", &NAMES, VALID, false);
    let server = tls_server(dir.path(), &cert, &pki);
    let ca = pki.ca_file();
    let agent = Agent::start_with_env(
        &dir.path().join("agent"),
        &[
            "--server",
            &server.url,
            "--ca-cert",
            ca.to_str().unwrap(),
            "--status-interval",
            "1",
        ],
        &[("CMS_AGENT_LOG", "debug")],
    );
    let summary = server.wait_for_agent_state("IDLE");
    assert!(summary.online);
    assert_eq!(
        summary.network.as_deref(),
        Some("direct"),
        "the route operators see"
    );
    agent.wait_for_log("websocket connected");
    agent.wait_for_log("heartbeat sent");
    let config = std::fs::read_to_string(agent.data_dir.join("config.json")).unwrap();
    assert!(
        config.contains("BEGIN CERTIFICATE"),
        "the CA is saved: {config}"
    );
}

#[test]
fn an_unknown_ca_is_refused_said_once_and_reported_after_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let cert = pki.server_cert("server", &NAMES, VALID, false);
    let server = tls_server(dir.path(), &cert, &pki);
    let data = dir.path().join("agent");
    let mut agent = Agent::start_with_env(
        &data,
        &["--server", &server.url],
        &[("CMS_AGENT_LOG", "debug")],
    );
    agent.wait_for_log("certificate issuer is not trusted");
    wait_for("two more refused attempts", || {
        (count(&agent.log(), "backend still unreachable") >= 2).then_some(())
    });
    let log = agent.log();
    assert_eq!(
        count(&log, "cannot reach the backend"),
        1,
        "logged once: {log}"
    );
    assert!(
        agent.is_running(),
        "a refused certificate does not stop the agent"
    );
    assert!(server.agents().is_empty());
    assert!(agent.stop().success());

    // The operator installs the CA: the agent registers and reports what was wrong.
    let ca = pki.ca_file();
    let _agent = Agent::start(&data, &["--ca-cert", ca.to_str().unwrap()]);
    server.wait_for_agent_state("IDLE");
    let report = network_problem_report(&server);
    assert!(report.message.contains("not trusted"), "{}", report.message);
}

#[test]
fn an_expired_certificate_is_refused_until_its_renewal_on_disk_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let expired = pki.server_cert("server", &NAMES, (-30, -1), false);
    let server = tls_server(dir.path(), &expired, &pki);
    let ca = pki.ca_file();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &["--server", &server.url, "--ca-cert", ca.to_str().unwrap()],
    );
    agent.wait_for_log("certificate has expired");

    // Renewed in place, with an RSA key this time; the server is not restarted.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new modification time
    pki.server_cert("server", &NAMES, VALID, true);
    agent.wait_for_log("registered with the server");
    server.wait_for_agent_state("IDLE");
    let report = network_problem_report(&server);
    assert!(report.message.contains("expired"), "{}", report.message);
}

#[test]
fn a_certificate_for_another_name_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let cert = pki.server_cert("server", &["backend.other.example"], VALID, false);
    let server = tls_server(dir.path(), &cert, &pki);
    let ca = pki.ca_file();
    let mut agent = Agent::start(
        &dir.path().join("agent"),
        &["--server", &server.url, "--ca-cert", ca.to_str().unwrap()],
    );
    agent.wait_for_log("name mismatch");
    assert!(agent.is_running());
    assert!(!agent.log().contains("registered with the server"));
    drop(server);
}

/// A server on its own self-signed certificate, and an agent given `pinned` with `--ca-cert`.
fn pinned_agent(dir: &Path, served: &ServerCert, pinned: &Path) -> (Server, Agent) {
    let (cert, key) = (served.cert.to_str().unwrap(), served.key.to_str().unwrap());
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    let server = Server::start_with(&dir.join("server"), &args, None);
    let agent = Agent::start(
        &dir.join("agent"),
        &[
            "--server",
            &server.url,
            "--ca-cert",
            pinned.to_str().unwrap(),
        ],
    );
    (server, agent)
}

#[test]
fn a_self_signed_ca_certificate_is_pinned_with_its_name_and_validity_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let good = self_signed_server_cert(&certs, "good", &NAMES, VALID);
    let (_server, agent) = pinned_agent(&dir.path().join("good"), &good, &good.cert);
    agent.wait_for_log("registered with the server");
    agent.wait_for_log("websocket connected");

    let cases = [
        (
            "other-name",
            &["backend.other.example"][..],
            VALID,
            "name mismatch",
        ),
        ("no-san", &[][..], VALID, "subjectAltName must list"),
        ("expired", &NAMES[..], (-30, -1), "certificate has expired"),
    ];
    for (name, names, days, said) in cases {
        let cert = self_signed_server_cert(&certs, name, names, days);
        let (_server, mut agent) = pinned_agent(&dir.path().join(name), &cert, &cert.cert);
        agent.wait_for_log(said);
        assert!(agent.is_running());
        assert!(
            !agent.log().contains("registered with the server"),
            "{name}"
        );
    }

    // Another self-signed certificate than the one given is no pin: the message says how.
    let other = self_signed_server_cert(&certs, "other", &NAMES, VALID);
    let (_server, mut agent) = pinned_agent(&dir.path().join("other"), &other, &good.cert);
    agent.wait_for_log("pass that very certificate with --ca-cert to pin it");
    assert!(!agent.log().contains("registered with the server"));
    assert!(agent.is_running());
}

#[test]
fn a_server_without_a_usable_key_pair_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let one = pki.server_cert("one", &NAMES, VALID, false);
    let other = pki.server_cert("other", &NAMES, VALID, false);
    let missing = dir.path().join("missing.key");
    for (key, expected) in [
        (&other.key, "does not belong"),
        (&missing, "cannot read --tls-key"),
    ] {
        let output = std::process::Command::new(util::server_exe())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("server"))
            .arg("--tls-cert")
            .arg(&one.cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn through_an_authenticating_proxy_the_agent_registers_and_holds_its_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let cert = pki.server_cert("server", &NAMES, VALID, false);
    let server = tls_server(dir.path(), &cert, &pki);
    let proxy = ForwardProxy::start(&dir.path().join("proxy"), "agent", "pr0xy-pass");
    let ca = pki.ca_file();
    let ca = ca.to_str().unwrap();

    let good = format!("http://agent:pr0xy-pass@{}", proxy.addr);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[
            "--server",
            &server.url,
            "--ca-cert",
            ca,
            "--proxy",
            &good,
            "--status-interval",
            "1",
        ],
    );
    server.wait_for_agent_state("IDLE");
    agent.wait_for_log("websocket connected");
    agent.wait_for_log("route=explicit proxy");
    wait_for("the tunnels in the proxy's log", || {
        (count(&proxy.log(), "CONNECT") >= 2).then_some(())
    });

    let wrong = format!("http://agent:not-the-pass@{}", proxy.addr);
    let mut refused = Agent::start(
        &dir.path().join("refused"),
        &["--server", &server.url, "--ca-cert", ca, "--proxy", &wrong],
    );
    refused.wait_for_log("proxy refused");
    assert!(refused.is_running());
    assert_eq!(
        server.agents().len(),
        1,
        "only the agent with the right password"
    );

    // Without --proxy the system's setting applies (HTTPS_PROXY on Linux); --proxy none wins.
    let from_env = Agent::start_with_env(
        &dir.path().join("from-env"),
        &["--server", &server.url, "--ca-cert", ca],
        &[("HTTPS_PROXY", &good)],
    );
    from_env.wait_for_log("route=system proxy (HTTPS_PROXY)");
    from_env.wait_for_log("websocket connected");
    let direct = Agent::start_with_env(
        &dir.path().join("direct"),
        &["--server", &server.url, "--ca-cert", ca, "--proxy", "none"],
        &[("HTTPS_PROXY", "http://127.0.0.1:9")],
    );
    direct.wait_for_log("route=direct");
    direct.wait_for_log("websocket connected");
    wait_for("three agents registered", || {
        (server.agents().len() == 3).then_some(())
    });
    for log in [agent.log(), refused.log(), from_env.log()] {
        assert!(
            !log.contains("pr0xy-pass") && !log.contains("not-the-pass"),
            "{log}"
        );
    }
}
