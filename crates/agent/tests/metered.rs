//! `--metered` and urgent releases end to end (issue 27), with real builds, the real server and
//! the real updater: an agent told its connection is metered defers an ordinary release (the
//! server counts it deferred, neither failed nor in flight) until it runs with `--metered no`;
//! an urgent release goes through at once; and `--metered auto` asks NetworkManager, here a fake
//! one served by this test on a private `dbus-daemon` given as the system bus.

#![cfg(target_os = "linux")] // NetworkManager over D-Bus; the Windows lane checks its side
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use util::machine::{Machine, wait_for_version};
use util::{Server, server_command, wait_for};

/// `cms-server rollout status` of `version`, as JSON.
fn rollout_status(server_dir: &Path, version: &str) -> serde_json::Value {
    let text = server_command(server_dir, &["rollout", "status", "--version", version]);
    serde_json::from_str(&text).unwrap()
}

/// Waits until the server counts the agent deferred for `version`, and checks it counts it
/// nowhere else: not failed, not in progress, not in flight.
fn wait_until_deferred(machine: &Machine, version: &str) -> serde_json::Value {
    let status = wait_for(&format!("{version} counted deferred"), || {
        let status = rollout_status(&machine.server_dir, version);
        (status["funnel"]["ends"]["deferred"] == 1).then_some(status)
    });
    let ends = &status["funnel"]["ends"];
    assert_eq!(
        (&ends["failed"], &ends["in_progress"], &status["in_flight"]),
        (&0.into(), &0.into(), &0.into()),
        "{status}"
    );
    assert_eq!(status["funnel"]["offered"], 0, "{status}");
    status
}

/// A 1.0.0 machine with its server, the agent running with `extra` on 1.0.0.
fn running(extra: &[&str]) -> (Machine, Server) {
    let machine = Machine::new("1.0.0");
    let server = Server::start(&machine.server_dir);
    machine.start_via(&server.url, "3600", extra);
    wait_for_version(&server, "1.0.0");
    (machine, server)
}

#[test]
fn a_metered_agent_defers_an_ordinary_release_until_it_runs_unmetered() {
    let (machine, server) = running(&["--metered", "yes"]);
    assert_eq!(machine.config()["metered"], "yes");
    machine.publish("2.0.0");
    wait_until_deferred(&machine, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 1.0.0");
    let status = machine.status();
    assert!(status.contains("metered: yes (detected: "), "{status}");
    let log = std::fs::read_to_string(machine.data.join("logs/agent.log")).unwrap();
    assert!(
        log.contains("update deferred: the connection is metered"),
        "{log}"
    );
    assert!(!log.contains("update starting"), "{log}");

    assert!(machine.cli(&["--stop"]).status.success());
    machine.start_via(&server.url, "3600", &["--metered", "no"]);
    wait_for_version(&server, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    assert_eq!(machine.config()["metered"], "no");
    let status = wait_for("the update counted healthy", || {
        let status = rollout_status(&machine.server_dir, "2.0.0");
        (status["funnel"]["ends"]["healthy"] == 1).then_some(status)
    });
    assert_eq!(status["funnel"]["ends"]["deferred"], 0, "{status}");
}

#[test]
fn an_urgent_release_is_taken_on_a_metered_connection() {
    let (machine, server) = running(&["--metered", "yes"]);
    machine.publish_with("2.0.0", &["--urgent"]);
    wait_for_version(&server, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 2.0.0");
    let status = rollout_status(&machine.server_dir, "2.0.0");
    assert_eq!(status["funnel"]["ends"]["deferred"], 0, "{status}");
}

/// A `dbus-daemon` of its own (a session-style bus on a private socket), stopped on drop.
struct PrivateBus {
    daemon: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts one, or says why it cannot (no `dbus-daemon` on this machine).
    fn start() -> Option<PrivateBus> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, bus_config(dir.path())).unwrap();
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--print-address", "--nofork"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let mut address = String::new();
        let stdout = daemon.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut address).unwrap();
        Some(PrivateBus {
            daemon,
            address: address.trim().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A bus listening in `dir` on which anyone may own any name and call anything.
fn bus_config(dir: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        dir.display()
    )
}

/// NetworkManager as the agent sees it: its `Metered` property, nothing else.
struct FakeNetworkManager {
    metered: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNetworkManager {
    #[zbus(property)]
    fn metered(&self) -> u32 {
        self.metered
    }
}

/// Serves a [`FakeNetworkManager`] saying `metered` on the bus at `address`, for as long as the
/// returned connection and runtime live.
fn serve_network_manager(
    address: &str,
    metered: u32,
) -> (tokio::runtime::Runtime, zbus::Connection) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connection = runtime.block_on(async {
        zbus::connection::Builder::address(address)
            .unwrap()
            .name("org.freedesktop.NetworkManager")
            .unwrap()
            .serve_at(
                "/org/freedesktop/NetworkManager",
                FakeNetworkManager { metered },
            )
            .unwrap()
            .build()
            .await
            .unwrap()
    });
    (runtime, connection)
}

#[test]
fn auto_asks_network_manager_on_the_system_bus() {
    let Some(bus) = PrivateBus::start() else {
        let required = std::env::var("CMS_REQUIRE_DBUS").is_ok_and(|v| v == "1");
        assert!(!required, "dbus-daemon is missing and CMS_REQUIRE_DBUS=1");
        eprintln!("SKIPPED: no dbus-daemon on this machine (apt-get install dbus-daemon)");
        return;
    };
    let _network_manager = serve_network_manager(&bus.address, 1);
    let machine = Machine::new("1.0.0");
    machine.set_env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);
    let server = Server::start(&machine.server_dir);
    machine.start_via(&server.url, "3600", &["--metered", "auto"]);
    wait_for_version(&server, "1.0.0");
    assert!(
        machine.config().get("metered").is_none(),
        "auto is the default"
    );
    let status = machine.status();
    assert!(status.contains("metered: auto (detected: yes)"), "{status}");

    machine.publish("2.0.0");
    wait_until_deferred(&machine, "2.0.0");
    assert_eq!(machine.exe_version(), "cms_agent 1.0.0");
    let log = std::fs::read_to_string(machine.data.join("logs/agent.log")).unwrap();
    assert!(log.contains("detected=yes"), "{log}");
}
