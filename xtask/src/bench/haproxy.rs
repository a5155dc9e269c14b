//! The load balancer of the replica step: a real haproxy (Debian's package) in front of the
//! replicas, with the configuration [`config`] writes. `docs/DEPLOYMENT.md` shows that exact
//! text (a test below keeps the two the same), so the setup the documentation recommends is
//! the one the bench measured.
//!
//! Must never: listen on anything but loopback, or outlive its handle (dropping a
//! [`RunningProxy`] kills haproxy).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use super::fixture;
use crate::host;
use crate::util::{self, describe};

/// The haproxy configuration for `replicas` (`host:port` each) behind `bind` (`host:port`),
/// holding up to `maxconn` agent connections, connecting to the replicas from `source` (an
/// address of its own, so that each balancer has the whole range of local ports for its
/// connections: one per agent, plus one per registration that then waits out TIME_WAIT).
///
/// WebSocket-aware: haproxy passes the upgrade in `mode http` and then applies `timeout
/// tunnel` to the open socket (agents heartbeat every 60 s and the server pings every 30 s).
/// `leastconn` spreads long-lived sockets evenly; `option redispatch` with `retries` sends a
/// reconnect that meets a dead replica (before its health check has marked it down) to a live
/// one; `GET /healthz` is 200 only while the replica reaches its database.
pub fn config(bind: &str, source: &str, replicas: &[String], maxconn: usize) -> String {
    let mut text = format!(
        "global
    maxconn {maxconn}

defaults
    mode http
    option forwardedfor
    maxconn {maxconn}
    timeout connect 5s
    timeout http-request 10s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h

frontend cms
    bind {bind}
    default_backend replicas

backend replicas
    balance leastconn
    option redispatch
    retries 3
    option httpchk GET /healthz
    source {source}
"
    );
    for (i, address) in replicas.iter().enumerate() {
        text.push_str(&format!(
            "    server cms{} {address} check inter 2s fall 2\n",
            i + 1
        ));
    }
    text
}

/// The haproxy program, if installed (`/usr/sbin` is often missing from `PATH`).
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    util::find_on_path(&path, "haproxy").or_else(|| {
        ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .map(PathBuf::from)
            .into_iter()
            .find(|p| p.is_file())
    })
}

/// A running haproxy; killed when dropped.
#[derive(Debug)]
pub struct RunningProxy {
    child: Child,
    url: String,
}

impl RunningProxy {
    /// Writes `config_text` to `config_path`, checks it (`haproxy -c`), starts haproxy in the
    /// foreground with its messages in `log`, and waits until `bind` answers `/healthz`.
    pub fn start(
        exe: &Path,
        config_path: &Path,
        config_text: &str,
        bind: &str,
        log: &Path,
    ) -> Result<RunningProxy> {
        std::fs::write(config_path, config_text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut check = Command::new(exe);
        check.arg("-c").arg("-q").arg("-f").arg(config_path);
        util::output_checked(&mut check).context("haproxy refused the generated configuration")?;
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("-db")
            .arg("-f")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&cmd)))?;
        let mut proxy = RunningProxy {
            child,
            url: format!("http://{bind}"),
        };
        proxy.wait_healthy(log)?;
        Ok(proxy)
    }

    fn wait_healthy(&mut self, log: &Path) -> Result<()> {
        let url = format!("{}{}", self.url, cms_protocol::paths::HEALTHZ);
        let client = reqwest::blocking::Client::new();
        fixture::wait_for("haproxy to pass /healthz to a replica", || {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited with {status}; see {}", log.display());
            }
            let answer = client.get(&url).send();
            Ok(answer.is_ok_and(|r| r.status().is_success()).then_some(()))
        })
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop (SIGTERM) and waits for its exit.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            host::stop_child(&mut self.child)?;
        }
        util::wait_child(&mut self.child, "haproxy", fixture::WAIT).map(drop)
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `haproxy -v`'s first line.
pub fn version(exe: &Path) -> String {
    super::machine::tool_version(&exe.to_string_lossy(), &["-v"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replica step's addresses as `docs/DEPLOYMENT.md` shows them.
    fn documented() -> String {
        let replicas = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"].map(String::from);
        config("127.0.0.1:8080", "127.0.1.1", &replicas, 9000)
    }

    #[test]
    fn deployment_shows_the_configuration_the_bench_uses() {
        let page = util::project_root().join("docs").join("DEPLOYMENT.md");
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(
            text.contains(&documented()),
            "docs/DEPLOYMENT.md must show haproxy::config's text verbatim:\n{}",
            documented()
        );
    }

    #[test]
    fn every_replica_is_health_checked() {
        let text = documented();
        assert_eq!(text.matches(" check inter 2s fall 2\n").count(), 3);
        assert!(text.contains("server cms3 127.0.0.1:8083"));
        assert!(text.contains("balance leastconn\n    option redispatch\n"));
    }
}
