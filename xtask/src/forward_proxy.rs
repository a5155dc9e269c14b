//! A real forward proxy on loopback for the tasks that send the agent through one: Debian's
//! tinyproxy in the foreground, with its own configuration and log in a folder of ours, open or
//! requiring Basic authentication. `.ci/run` installs tinyproxy.
//!
//! Must never: listen on anything but 127.0.0.1, or outlive its handle (dropping a
//! [`ForwardProxy`] kills the process).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::util::{self, describe};

/// How long tinyproxy may take to listen.
const START_WAIT: Duration = Duration::from_secs(30);

/// A running tinyproxy.
#[derive(Debug)]
pub struct ForwardProxy {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl ForwardProxy {
    /// Starts tinyproxy on a free loopback port with its files in `dir`; with `credentials`
    /// (user, password) it answers 407 to any request without them.
    pub fn start(dir: &Path, credentials: Option<(&str, &str)>) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 120\nLogFile \"{}\"\nLogLevel Info\n\
             MaxClients 50\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log.display()
        );
        if let Some((user, password)) = credentials {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
        let mut cmd = Command::new("tinyproxy");
        cmd.arg("-d")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} (apt-get install tinyproxy)",
                describe(&cmd)
            )
        })?;
        let addr = format!("127.0.0.1:{port}");
        let proxy = ForwardProxy { child, addr, log };
        util::wait_for("tinyproxy to listen", START_WAIT, || {
            Ok(TcpStream::connect(&proxy.addr).ok().map(drop))
        })?;
        Ok(proxy)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What tinyproxy logged so far (a line per request it handled).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many `CONNECT` tunnels it was asked for so far (its request lines, `Request (file
    /// descriptor N): CONNECT host:port HTTP/1.1`; `CONNECT` alone is also a log level).
    pub fn tunnels(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("): CONNECT "))
            .count()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
