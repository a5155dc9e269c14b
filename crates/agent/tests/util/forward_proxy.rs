//! A real forward proxy on loopback: Debian's tinyproxy, requiring Basic authentication, in
//! the foreground with its own config and log in the test's temp dir. `.ci/run` installs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::wait_for;

/// A running tinyproxy.
pub struct ForwardProxy {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: PathBuf,
}

impl ForwardProxy {
    /// Starts tinyproxy on a free loopback port, accepting only `user:password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> ForwardProxy {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Info\n\
                 MaxClients 50\nAllow 127.0.0.1\nBasicAuth {user} {password}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tinyproxy (apt-get install tinyproxy): {e}"));
        let addr = format!("127.0.0.1:{port}");
        wait_for("tinyproxy to listen", || {
            std::net::TcpStream::connect(&addr).ok().map(drop)
        });
        ForwardProxy { child, addr, log }
    }

    /// What tinyproxy logged so far (one line per request it handled).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
