//! `--enable-autostart` and `--disable-autostart`: the settings saved under the lock, the
//! autostart entry (the service or systemd unit when elevated, else the user's entry) written or
//! removed, and the IPC secret removed once no agent runs. It runs before the lock is taken for
//! the agent itself and never starts an agent.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::core::config::ConfigManager;
use crate::core::storage::StateManager;
use crate::net::servers::ServerList;
use crate::net::trust::TrustedMetadata;
use crate::system::lock_manager::{Acquire, LockManager};
use crate::system::service::{self, SERVICE_NAME, StopOutcome};
use crate::system::{self, SecretAction, SecretScope};

use super::start::{describe_holder, lock_held, open_config, save_settings};
use super::{Args, EXIT_LOCK_HELD, STOP_TIMEOUT, machine_wide};

/// `--enable-autostart` / `--disable-autostart`: the autostart entry, then exit.
pub(super) fn autostart(cli: &Args) -> Result<u8> {
    let machine_wide = machine_wide(cli);
    if cli.disable_autostart {
        return disable_autostart(cli, machine_wide);
    }
    if gives_settings(cli) {
        let storage = StateManager::new(cli.data_dir.clone(), machine_wide)?;
        if !save_settings_first(&storage, cli)? {
            return Ok(EXIT_LOCK_HELD);
        }
        println!("settings saved in {}", storage.config_path().display());
    }
    let exe = system::installed_exe().context("cannot find the path of this program")?;
    let place = system::register_autostart(&exe, &entry_args(cli, machine_wide), machine_wide)?;
    println!("autostart enabled: {place}");
    Ok(0)
}

/// Whether the command line carries settings that outlive this run.
fn gives_settings(cli: &Args) -> bool {
    !cli.server.is_empty()
        || cli.enrollment_token.is_some()
        || cli.trusted_root.is_some()
        || cli.ca_cert.is_some()
        || cli.proxy.is_some()
        || cli.group.is_some()
        || cli.download_limit.is_some()
        || cli.metered.is_some()
}

/// What the autostart entry passes: `--service` (the machine's service or systemd unit) or
/// `--per-user`, and `--data-dir` when one was given.
fn entry_args(cli: &Args, machine_wide: bool) -> Vec<OsString> {
    let mode = if machine_wide {
        "--service"
    } else {
        "--per-user"
    };
    let mut args: Vec<OsString> = vec![mode.into()];
    if let Some(dir) = &cli.data_dir {
        args.push("--data-dir".into());
        args.push(
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .into(),
        );
    }
    args
}

/// Saves `--server`, `--enrollment-token`, `--group`, `--download-limit`, `--metered`, `--ca-cert`, `--proxy`
/// and `--trusted-root` while
/// holding the lock, so no running agent overwrites them; `false` (the holder is printed) when
/// an agent runs.
pub(super) fn save_settings_first(storage: &StateManager, cli: &Args) -> Result<bool> {
    let lock = LockManager::new(storage.storage_path());
    if let Acquire::HeldBy(holder) = lock.acquire()? {
        lock_held(storage, holder.as_ref());
        eprintln!("cms_agent: stop it first (--stop), or give it the new settings with --force");
        return Ok(false);
    }
    let (mut config, _reporter) = open_config(storage)?;
    save_settings(&mut config, cli)?;
    if let Some(root) = &cli.trusted_root {
        pin_trusted_root(storage, &config, root)?;
    }
    lock.release();
    Ok(true)
}

/// Pins `root` in the storage's trust store (the running agent would do it at start).
fn pin_trusted_root(storage: &StateManager, config: &ConfigManager, root: &Path) -> Result<()> {
    let servers = config.config().servers();
    if servers.is_empty() {
        bail!("--trusted-root needs a server: pass --server URL too");
    }
    let servers = Arc::new(ServerList::parse(&servers)?);
    // Pinning reads the file and writes the trust store; the client is never used for it.
    let client = reqwest::Client::builder()
        .build()
        .context("cannot set up an HTTP client")?;
    TrustedMetadata::new(storage.tuf_dir(), servers, client).pin_root_file(root)?;
    Ok(())
}

/// `--disable-autostart`: the service is stopped (ended after [`STOP_TIMEOUT`]) and deleted,
/// or the user's entry removed; then the IPC secret goes, unless an agent still runs.
fn disable_autostart(cli: &Args, machine_wide: bool) -> Result<u8> {
    if machine_wide {
        stop_service()?;
    }
    match system::unregister_autostart(machine_wide)? {
        Some(place) => println!("autostart disabled: removed {place}"),
        None => println!("autostart was not enabled; nothing to remove"),
    }
    remove_ipc_secret(cli, machine_wide)?;
    Ok(0)
}

/// Stops the service through the service manager; one that does not stop in time is ended by
/// the PID the service manager named.
fn stop_service() -> Result<()> {
    match service::stop(STOP_TIMEOUT)? {
        StopOutcome::NotInstalled | StopOutcome::WasStopped => {}
        StopOutcome::Stopped => println!("service {SERVICE_NAME} stopped"),
        StopOutcome::TimedOut { pid: Some(pid) } => {
            eprintln!(
                "cms_agent: service {SERVICE_NAME} did not stop within {} s; ending its process {pid}",
                STOP_TIMEOUT.as_secs()
            );
            system::terminate_process(pid).with_context(|| format!("cannot end process {pid}"))?;
        }
        StopOutcome::TimedOut { pid: None } => bail!(
            "service {SERVICE_NAME} did not stop within {} s and its process is unknown",
            STOP_TIMEOUT.as_secs()
        ),
    }
    Ok(())
}

/// Removes the IPC secret of the agent whose storage this is, once no agent runs there.
fn remove_ipc_secret(cli: &Args, machine_wide: bool) -> Result<()> {
    let dir = match &cli.data_dir {
        Some(dir) => Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone())),
        None => system::default_data_dir(machine_wide),
    };
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        return Ok(()); // no storage, no agent, nothing stored there
    };
    let lock = LockManager::new(&dir);
    if let Acquire::HeldBy(holder) = lock.acquire()? {
        println!(
            "an agent still runs on {} ({}); its IPC secret is kept",
            dir.display(),
            describe_holder(holder.as_ref())
        );
        return Ok(());
    }
    let scope = SecretScope::current(machine_wide);
    let removed = system::manage_ipc_secret(SecretAction::Delete, scope, &dir);
    lock.release();
    removed?;
    println!("IPC secret removed ({} agent)", scope.as_str());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::*;

    #[test]
    fn the_entry_runs_the_service_or_the_user_with_an_absolute_data_dir() {
        let given = args(&["--enable-autostart", "--data-dir", "relative"]).unwrap();
        let entry = entry_args(&given, true);
        assert_eq!(entry[..2], ["--service", "--data-dir"].map(OsString::from));
        assert!(Path::new(&entry[2]).is_absolute());
        assert_eq!(entry_args(&given, false)[0], "--per-user");
    }

    #[test]
    fn settings_on_the_command_line_are_saved_first() {
        for words in [
            &["--enable-autostart", "--server", "https://a"][..],
            &["--enable-autostart", "--proxy", "none"],
            &["--enable-autostart", "--trusted-root", "root.json"],
        ] {
            assert!(gives_settings(&args(words).unwrap()), "{words:?}");
        }
    }
}
