//! wine-e2e's network scenario: the Windows agent (`dist/`'s `cms_agent.exe` and `updater.exe`,
//! each agent in a folder of its own, started from the console with `--data-dir`) against
//! `cms-server serve --tls-cert/--tls-key` on loopback, with a throwaway CA ([`crate::pki`])
//! and Debian's tinyproxy ([`crate::forward_proxy`]). In its own Wine prefix; every check is
//! seen happen:
//!
//! 1. `--ca-cert`: the agent registers over HTTPS, heartbeats, holds its WebSocket over WSS,
//!    and then updates itself to 2.0.0 over HTTPS (package and TUF metadata through the same
//!    trust); the CA is saved in config.json.
//! 2. no `--ca-cert`: the agent refuses the server, says why in its log, keeps running and never
//!    registers. Wine 8's certificate engine refuses every certificate of the run with
//!    `CERT_E_REVOCATION_FAILURE` (also one whose CA is in its Root store), where Windows says
//!    `CERT_E_UNTRUSTEDROOT` (`certificate issuer is not trusted`): either is accepted, and the
//!    lane says which it saw.
//! 3. `--proxy http://user:password@127.0.0.1:PORT` to a tinyproxy requiring Basic
//!    authentication: the agent registers, heartbeats and holds its WebSocket through `CONNECT`
//!    tunnels (counted in tinyproxy's log); the password is in no log.
//! 4. the machine's WinHTTP proxy (what a LocalSystem service sees), pointing at an open
//!    tinyproxy: `netsh winhttp set proxy` is tried first; Wine 8's netsh accepts it and stores
//!    nothing, so the scenario writes the registry value netsh writes on Windows
//!    (`HKLM\...\Internet Settings\Connections\WinHttpSettings`), which Wine's
//!    `WinHttpGetDefaultProxyConfiguration` reads. The agent, without `--proxy`, takes the
//!    route `system proxy (WinHTTP)` through the tunnel, and installs the release 2.0.0 of
//!    step 1 through it (offered in its first heartbeat's answer) before it is stopped. The
//!    lane says what Wine cannot show and the command that shows it on Windows.
//!
//! The agents run with `http_proxy`/`https_proxy`/`no_proxy` removed from their environment:
//! Wine's WinHTTP answers with `http_proxy` when the registry holds no setting.
//!
//! Must never: touch anything outside its prefix and `target/`, leave a process running, or
//! call a step passed that it did not see happen.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_protocol::AgentSummary;

use crate::build::{Stamped, WINDOWS};
use crate::dist_tree;
use crate::forward_proxy::ForwardProxy;
use crate::pki::TestPki;
use crate::server::{Release, RunningServer, Server, ServerOutput};
use crate::util::{self, ok, step, wait_for};
use crate::windows::setup;
use crate::windows::wine::{self, WinePrefix, run_windows};

/// The release the agent over HTTPS updates itself to.
const NEW_VERSION: &str = "2.0.0";
/// The proxy's Basic credentials (the password must appear in no log).
const PROXY_USER: &str = "cmsagent";
const PROXY_PASSWORD: &str = "pr0xy-S3cret-pass";
/// Where the agents live, relative to `C:\`.
const ROOT: &str = "cms-net";
/// The key `netsh winhttp set proxy` writes on Windows, and its value.
const WINHTTP_KEY: &str =
    r"HKLM\Software\Microsoft\Windows\CurrentVersion\Internet Settings\Connections";
const WINHTTP_VALUE: &str = "WinHttpSettings";
/// How long any one thing the scenario waits for may take under Wine.
const WAIT: Duration = Duration::from_secs(120);
/// `CERT_E_REVOCATION_FAILURE` (0x800B010E) as the agent logs it: what Wine 8's certificate
/// engine answers for the test certificates, where Windows says `CERT_E_UNTRUSTEDROOT`.
const WINE_REVOCATION_FAILURE: &str = "-2146762482";
/// How long a refusing agent is watched for an unwanted registration or exit.
const REFUSING_WATCH: Duration = Duration::from_secs(5);

/// Runs the scenario with the 2.0.0 build `new` as the update; prints what it saw.
pub fn run(new: &Stamped) -> Result<()> {
    step("network: HTTPS with a private CA, an authenticating proxy, the WinHTTP proxy");
    let prefix = wine::prepare_prefix("wine-net")?;
    prefix.persist()?;
    let root = prefix.drive_c().join(ROOT);
    let pki = TestPki::create(&root.join("pki"))?;
    let server_dir = root.join("server");
    let mut server = Server::new(&crate::build::server()?, &server_dir, ServerOutput::Print)
        .with_tls(&pki)
        .start()?;
    ensure!(
        server.url().starts_with("https://"),
        "the server serves {}",
        server.url()
    );
    let net = Network {
        prefix: &prefix,
        server: &server,
        root,
        ca: format!(r"C:\{ROOT}\pki\ca.pem"),
    };
    let outcome = net.steps(new);
    if outcome.is_err() {
        net.print_logs();
    }
    let stopped = server.stop();
    outcome?;
    stopped
}

/// One run of the scenario.
struct Network<'a> {
    prefix: &'a WinePrefix,
    server: &'a RunningServer,
    /// `C:\cms-net` as a Unix path.
    root: PathBuf,
    /// The CA file as the agents see it.
    ca: String,
}

/// One agent of the scenario: its own exe, updater and data folder under `C:\cms-net\NAME`.
struct NetAgent {
    name: &'static str,
    /// The folder as a Unix path.
    dir: PathBuf,
    /// The process this scenario started (the updater starts its successors).
    child: Child,
}

impl NetAgent {
    fn exe(&self) -> String {
        exe_of(self.name)
    }

    fn data_dir(&self) -> String {
        data_dir_of(self.name)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("data/logs/agent.log")).unwrap_or_default()
    }

    fn all_logs(&self) -> String {
        let updater = fs::read_to_string(self.dir.join("data/logs/updater.log"));
        format!("{}{}", self.log(), updater.unwrap_or_default())
    }

    fn config(&self) -> Result<serde_json::Value> {
        let path = self.dir.join("data/config.json");
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The id the server gave it (from its config.json).
    fn agent_id(&self) -> Result<String> {
        self.config()?["credentials"]["agent_id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{} has no agent_id in config.json yet", self.name))
    }

    fn wait_for_log(&self, needle: &str) -> Result<()> {
        wait_for(
            &format!("{needle:?} in the log of the agent {}", self.name),
            WAIT,
            || Ok(self.log().contains(needle).then_some(())),
        )
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NetAgent {
    fn drop(&mut self) {
        // Best effort: the prefix's wineserver ends whatever is left when the scenario ends.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Network<'_> {
    fn steps(&self, new: &Stamped) -> Result<()> {
        let auth_proxy = ForwardProxy::start(
            &self.root.join("proxy-auth"),
            Some((PROXY_USER, PROXY_PASSWORD)),
        )?;
        let open_proxy = ForwardProxy::start(&self.root.join("proxy-open"), None)?;
        let proxy_url = format!("http://{PROXY_USER}:{PROXY_PASSWORD}@{}", auth_proxy.addr());
        let ca = ["--ca-cert", self.ca.as_str()];
        let mut trusted = self.start("tls", &[&ca[..], &["--status-interval", "1"]].concat())?;
        let mut refusing = self.start("no-ca", &[])?;
        let proxied = self.start(
            "proxy",
            &[&ca[..], &["--proxy", &proxy_url, "--status-interval", "1"]].concat(),
        )?;
        self.trusted_ca(&trusted)?;
        self.unknown_ca(&mut refusing)?;
        self.explicit_proxy(&proxied, &auth_proxy)?;
        self.stop(&refusing)?;
        self.stop(&proxied)?;
        self.update_over_https(&mut trusted, new)?;
        self.stop(&trusted)?;
        self.winhttp_proxy(&open_proxy)
    }

    /// Copies `dist/`'s agent and updater to `C:\cms-net\NAME` and starts the agent there with
    /// `--data-dir`, `--server` and `args`, debug logging, and no proxy variables.
    fn start(&self, name: &'static str, args: &[&str]) -> Result<NetAgent> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for exe in ["cms_agent", "updater"] {
            let from = dist_tree::binary(&WINDOWS, exe);
            let to = dir.join(WINDOWS.exe(exe));
            fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        }
        let mut cmd = self.prefix.command(exe_of(name));
        cmd.args([
            "--data-dir",
            &data_dir_of(name),
            "--server",
            self.server.url(),
        ])
        .args(args)
        .env("CMS_AGENT_LOG", "debug")
        .env("CMS_UPDATER_GRACE_SECS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for var in ["http_proxy", "https_proxy", "no_proxy"] {
            cmd.env_remove(var).env_remove(var.to_uppercase());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", util::describe(&cmd)))?;
        Ok(NetAgent { name, dir, child })
    }

    /// `cms_agent.exe --data-dir D --stop`, which waits for the agent's exit.
    fn stop(&self, agent: &NetAgent) -> Result<()> {
        run_windows(self.prefix.command(agent.exe()).args([
            "--data-dir",
            &agent.data_dir(),
            "--stop",
        ]))?;
        Ok(())
    }

    /// Waits until the server lists `agent` online and for `wanted`; returns its summary.
    fn wait_online(
        &self,
        agent: &NetAgent,
        what: &str,
        wanted: impl Fn(&AgentSummary) -> bool,
    ) -> Result<AgentSummary> {
        let id = wait_for(
            &format!("the agent {} to register", agent.name),
            WAIT,
            || agent.agent_id().map(Some),
        )?;
        self.server
            .wait_for_agent(what, WAIT, |a| a.agent_id == id && a.online && wanted(a))
    }

    /// Waits until the server lists `agent` online and IDLE on [`NEW_VERSION`], and its
    /// updater has verified it.
    fn wait_updated(&self, agent: &NetAgent, what: &str) -> Result<()> {
        self.wait_online(agent, what, |a| {
            a.version == NEW_VERSION && a.state == "IDLE"
        })?;
        agent.wait_for_log("update verified by the updater")
    }

    fn trusted_ca(&self, agent: &NetAgent) -> Result<()> {
        let summary = self.wait_online(agent, "the agent with --ca-cert online and IDLE", |a| {
            a.state == "IDLE"
        })?;
        agent.wait_for_log("websocket connected")?;
        agent.wait_for_log("heartbeat sent")?;
        ensure!(
            agent.config()?["ca_certs_pem"]
                .as_str()
                .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")),
            "config.json does not hold the CA"
        );
        ok(&format!(
            "--ca-cert: agent {} registered over HTTPS, heartbeats, WebSocket over WSS; the CA is \
             saved in config.json",
            summary.agent_id
        ));
        Ok(())
    }

    fn unknown_ca(&self, agent: &mut NetAgent) -> Result<()> {
        agent.wait_for_log("cannot reach the backend")?;
        let said = agent
            .log()
            .lines()
            .find(|l| l.contains("cannot reach the backend"))
            .map(|l| l.trim().to_owned())
            .unwrap_or_default();
        let windows_words = said.contains("certificate issuer is not trusted");
        ensure!(
            windows_words || said.contains(WINE_REVOCATION_FAILURE),
            "the agent without the CA gave another reason: {said}"
        );
        std::thread::sleep(REFUSING_WATCH);
        ensure!(
            agent.is_running(),
            "the agent without the CA exited after the refusal"
        );
        ensure!(
            !agent.log().contains("registered with the server") && agent.agent_id().is_err(),
            "the agent without the CA registered"
        );
        ok(&format!(
            "no --ca-cert: refused, still running, not registered; its log says: {said}"
        ));
        if !windows_words {
            println!(
                "    note: Wine cannot show the reason Windows gives: Wine 8's certificate engine \
                 refuses every certificate here with CERT_E_REVOCATION_FAILURE (os error \
                 {WINE_REVOCATION_FAILURE}), also one whose CA is in its Root store (so under Wine \
                 only --ca-cert, checked by rustls, gets through). On Windows the log says \
                 `certificate issuer is not trusted (unknown CA: pass its certificate with \
                 --ca-cert)`; check with `cms_agent.exe --data-dir C:\\t --server https://HOST` \
                 and C:\\t\\logs\\agent.log, then `certutil -addstore Root ca.cer` and see it \
                 register without --ca-cert."
            );
        }
        Ok(())
    }

    fn explicit_proxy(&self, agent: &NetAgent, proxy: &ForwardProxy) -> Result<()> {
        self.wait_online(agent, "the agent behind --proxy online", |_| true)?;
        agent.wait_for_log("route=explicit proxy")?;
        agent.wait_for_log("websocket connected")?;
        agent.wait_for_log("heartbeat sent")?;
        wait_for(
            "two tunnels in the authenticating proxy's log",
            WAIT,
            || Ok((proxy.tunnels() >= 2).then_some(())),
        )?;
        ensure!(
            !agent.all_logs().contains(PROXY_PASSWORD),
            "the proxy password is in the agent's log"
        );
        ok(&format!(
            "--proxy http://{PROXY_USER}:***@{} (Basic): registered, heartbeats, WebSocket through \
             CONNECT ({} tunnels); the password is in no log",
            proxy.addr(),
            proxy.tunnels()
        ));
        Ok(())
    }

    fn update_over_https(&self, agent: &mut NetAgent, new: &Stamped) -> Result<()> {
        self.server.publish(&Release {
            version: NEW_VERSION,
            platform: Some(WINDOWS.name),
            agent: &new.agent,
            updater: &new.updater,
        })?;
        self.wait_updated(agent, &format!("the agent {NEW_VERSION} online"))?;
        let out = run_windows(self.prefix.command(agent.exe()).arg("--version"))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            said == format!("cms_agent {NEW_VERSION}"),
            "the updated exe says {said:?}"
        );
        ok(&format!(
            "update over HTTPS (package and TUF metadata): {said}, online and IDLE"
        ));
        Ok(())
    }

    fn winhttp_proxy(&self, proxy: &ForwardProxy) -> Result<()> {
        self.set_winhttp_proxy(proxy.addr())?;
        let agent = self.start(
            "winhttp",
            &["--ca-cert", &self.ca, "--status-interval", "1"],
        )?;
        let result = self.through_winhttp(&agent, proxy);
        self.stop(&agent)?;
        setup::reg_delete(self.prefix, WINHTTP_KEY, WINHTTP_VALUE)?;
        result
    }

    fn through_winhttp(&self, agent: &NetAgent, proxy: &ForwardProxy) -> Result<()> {
        agent.wait_for_log("route=system proxy (WinHTTP)")?;
        self.wait_online(agent, "the agent behind the WinHTTP proxy online", |_| true)?;
        agent.wait_for_log("websocket connected")?;
        wait_for("two tunnels in the WinHTTP proxy's log", WAIT, || {
            Ok((proxy.tunnels() >= 2).then_some(()))
        })?;
        // Release 2.0.0 is published by now, so the first heartbeat's answer offers it: the
        // agent updates through the proxy, and is stopped only once that is over (a --stop
        // during an update is refused by design).
        let updated = format!("the agent behind the WinHTTP proxy updated to {NEW_VERSION}");
        self.wait_updated(agent, &updated)?;
        ok(&format!(
            "WinHTTP proxy {}: route=system proxy (WinHTTP), registered, updated to {NEW_VERSION}, \
             WebSocket through CONNECT ({} tunnels)",
            proxy.addr(),
            proxy.tunnels()
        ));
        println!(
            "    note: Wine cannot show: the setting made by `netsh winhttp set proxy` (a no-op \
             in Wine 8), a LocalSystem service reading it, or a proxy that authenticates the \
             machine (NTLM/Negotiate: not supported, Basic only). On Windows: `netsh winhttp set \
             proxy HOST:PORT`, `netsh winhttp show proxy`, restart the service \
             (`sc stop CMSAgent`, `sc start CMSAgent`), and look for `route=system proxy \
             (WinHTTP)` in C:\\ProgramData\\CMSAgent\\logs\\agent.log."
        );
        Ok(())
    }

    /// The machine's WinHTTP proxy set to `addr`: with netsh if this Wine implements it, else
    /// with the registry value netsh writes on Windows.
    fn set_winhttp_proxy(&self, addr: &str) -> Result<()> {
        run_windows(
            self.prefix
                .command("netsh")
                .args(["winhttp", "set", "proxy", addr]),
        )?;
        if setup::reg_query(self.prefix, &[WINHTTP_KEY, "/v", WINHTTP_VALUE])?.is_some() {
            ok(&format!("netsh winhttp set proxy {addr}: stored"));
            return Ok(());
        }
        println!(
            "    note: `netsh winhttp set proxy {addr}` exits 0 under Wine 8 and stores nothing; \
             writing {WINHTTP_KEY}\\{WINHTTP_VALUE} as netsh does on Windows"
        );
        setup::reg_add_binary(
            self.prefix,
            WINHTTP_KEY,
            WINHTTP_VALUE,
            &winhttp_settings(addr, ""),
        )?;
        ensure!(
            setup::reg_query(self.prefix, &[WINHTTP_KEY, "/v", WINHTTP_VALUE])?.is_some(),
            "the WinHttpSettings value was not stored"
        );
        Ok(())
    }

    /// The end of each agent's logs and of the server's view, for a failure.
    fn print_logs(&self) {
        for name in ["tls", "no-ca", "proxy", "winhttp"] {
            for log in ["agent.log", "updater.log"] {
                let path = self.root.join(name).join("data/logs").join(log);
                if let Ok(text) = fs::read_to_string(&path) {
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- last lines of {} ---", path.display());
                    eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
                }
            }
        }
        match self.server.agents() {
            Ok(agents) => eprintln!("--- the server lists: {agents:?}"),
            Err(e) => eprintln!("--- cannot list the server's agents: {e:#}"),
        }
    }
}

/// `C:\cms-net\NAME\cms_agent.exe`.
fn exe_of(name: &str) -> String {
    format!(r"C:\{ROOT}\{name}\cms_agent.exe")
}

/// `C:\cms-net\NAME\data`.
fn data_dir_of(name: &str) -> String {
    format!(r"C:\{ROOT}\{name}\data")
}

/// The `WinHttpSettings` value `netsh winhttp set proxy PROXY BYPASS` writes: a header (size
/// 0x18, a change counter, flags 3 = direct + named proxy), then the proxy list and the bypass
/// list, each as a little-endian length and ASCII text.
fn winhttp_settings(proxy: &str, bypass: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [0x18u32, 0, 3] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    for text in [proxy, bypass] {
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_winhttp_settings_value_is_laid_out_as_netsh_writes_it() {
        let bytes = winhttp_settings("127.0.0.1:3128", "<local>");
        assert_eq!(&bytes[..12], &[0x18, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&bytes[12..16], &[14, 0, 0, 0]);
        assert_eq!(&bytes[16..30], b"127.0.0.1:3128");
        assert_eq!(&bytes[30..34], &[7, 0, 0, 0]);
        assert_eq!(&bytes[34..], b"<local>");
    }
}
