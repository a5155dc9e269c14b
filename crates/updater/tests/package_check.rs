//! The real `updater` binary given a real package (the release format: a zip with
//! `manifest.json`, the agent and the updater) and the length and SHA-256 the agent verified:
//! a package swapped or altered after the agent's check is refused before anything changes
//! (the journal says `aborted`, the installed exe is untouched, the old agent is started
//! again); the package the agent checked passes and the update goes on; an older agent that
//! passes no hash still gets its update.
//!
//! The agents are shell scripts: the installed one records that it was started again, the new
//! one exits at once (so a checked package leads to a quick rollback, which proves the update
//! went past the check), a planted one records that it ran.

#![cfg(unix)] // shell-script agents; the Windows lane runs its own scenarios
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cms_platform::system::PLATFORM;
use cms_protocol::update::{UpdateJournal, UpdatePhase, package_file_name};
use sha2::{Digest, Sha256};
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

const NEW_VERSION: &str = "9.9.9";

/// An installed agent, its storage and a package in `updates/`, as the agent leaves them when
/// it hands over.
struct Machine {
    dir: tempfile::TempDir,
    exe: PathBuf,
    storage: PathBuf,
    package: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        let storage = dir.path().join("data");
        fs::create_dir_all(&install).unwrap();
        fs::create_dir_all(storage.join("logs")).unwrap();
        fs::create_dir_all(storage.join("updates")).unwrap();
        let exe = install.join("cms_agent");
        let restarted = dir.path().join("restarted");
        write_script(&exe, &format!("touch '{}'", restarted.display()));
        let package = storage
            .join("updates")
            .join(package_file_name(NEW_VERSION, PLATFORM));
        Machine {
            dir,
            exe,
            storage,
            package,
        }
    }

    /// Writes a package whose agent runs `agent_script`; returns its length and SHA-256.
    fn write_package(&self, path: &Path, agent_script: &str) -> (u64, String) {
        let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
        // Stored: the package's length depends on the entries' lengths only.
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .unix_permissions(0o755);
        let manifest = serde_json::json!({
            "version": NEW_VERSION,
            "platform": PLATFORM,
            "agent": "cms_agent",
            "updater": "updater",
        });
        zip.start_file("manifest.json", options).unwrap();
        zip.write_all(manifest.to_string().as_bytes()).unwrap();
        zip.start_file("cms_agent", options).unwrap();
        zip.write_all(format!("#!/bin/sh\n{agent_script}\n").as_bytes())
            .unwrap();
        zip.start_file("updater", options).unwrap();
        zip.write_all(b"not run in these tests").unwrap();
        zip.finish().unwrap();
        let bytes = fs::read(path).unwrap();
        (bytes.len() as u64, hex(&Sha256::digest(&bytes)))
    }

    /// The package the agent verified: its new agent exits at once.
    fn checked_package(&self) -> (u64, String) {
        self.write_package(&self.package, "exit 7")
    }

    /// Runs the updater as the agent launches it, with `extra` arguments before `--`.
    fn run_updater(&self, extra: &[&str]) -> ExitStatus {
        let mut finished = Command::new("true").spawn().unwrap();
        let old_pid = finished.id(); // the old agent has exited already
        finished.wait().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_updater"))
            .arg("--package-path")
            .arg(&self.package)
            .arg("--current-exe-path")
            .arg(&self.exe)
            .args(["--old-pid", &old_pid.to_string(), "--log-dir"])
            .arg(self.storage.join("logs"))
            .args(extra)
            .args(["--", "--server", "http://127.0.0.1:9"])
            .env("CMS_UPDATER_WAIT_SECS", "5")
            .env("CMS_UPDATER_VERIFY_SECS", "5")
            .env("CMS_UPDATER_CONTACT_SECS", "5")
            .env("CMS_UPDATER_GRACE_SECS", "0")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the updater did not finish in 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn journal(&self) -> UpdateJournal {
        let path = self.storage.join("updates/update-journal.json");
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.storage.join("logs/updater.log")).unwrap()
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits (up to 10 s) for the installed agent to have been started again.
    fn wait_restarted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.marker("restarted").exists() {
            assert!(
                Instant::now() < deadline,
                "the old agent was not started again"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_installed_exe_untouched(&self, original: &[u8]) {
        assert_eq!(fs::read(&self.exe).unwrap(), original, "the exe changed");
        for suffix in [".new", ".old"] {
            let mut neighbour = self.exe.clone().into_os_string();
            neighbour.push(suffix);
            assert!(
                !Path::new(&neighbour).exists(),
                "{suffix} left beside the exe"
            );
        }
    }
}

fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn checked_args(length: u64, sha256: &str) -> [String; 4] {
    [
        "--package-sha256".into(),
        sha256.into(),
        "--package-length".into(),
        length.to_string(),
    ]
}

fn run_checked(machine: &Machine, length: u64, sha256: &str) -> ExitStatus {
    let args = checked_args(length, sha256);
    machine.run_updater(&args.each_ref().map(String::as_str))
}

#[test]
fn a_valid_package_swapped_in_after_the_agents_check_is_refused_and_never_runs() {
    let machine = Machine::new();
    let original = fs::read(&machine.exe).unwrap();
    // Another well-formed release of the same length renamed over the checked one, as a
    // local attacker would.
    let pwned = machine.marker("pwned");
    let planted_agent = format!("touch '{}'", pwned.display());
    let checked_agent = format!("exit 7 #{}", "-".repeat(planted_agent.len() - 8));
    let (length, sha256) = machine.write_package(&machine.package, &checked_agent);
    let planted = machine.dir.path().join("planted.zip");
    assert_eq!(machine.write_package(&planted, &planted_agent).0, length);
    fs::rename(&planted, &machine.package).unwrap();

    let status = run_checked(&machine, length, &sha256);

    assert_eq!(status.code(), Some(2), "nothing changed");
    let journal = machine.journal();
    assert_eq!(journal.phase, UpdatePhase::Aborted);
    assert_eq!(journal.new_version, NEW_VERSION);
    let reason = journal.reason.unwrap();
    let actual = hex(&Sha256::digest(fs::read(&machine.package).unwrap()));
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert!(
        reason.contains(&sha256) && reason.contains(&actual),
        "both hashes: {reason}"
    );
    assert!(machine.log().contains("sha256 mismatch"));
    machine.assert_installed_exe_untouched(&original);
    machine.wait_restarted();
    assert!(!pwned.exists(), "the planted agent ran");
}

#[test]
fn a_package_altered_in_place_or_cut_short_is_refused() {
    let machine = Machine::new();
    let original = fs::read(&machine.exe).unwrap();
    let (length, sha256) = machine.checked_package();
    let mut bytes = fs::read(&machine.package).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&machine.package, &bytes).unwrap();

    assert_eq!(run_checked(&machine, length, &sha256).code(), Some(2));
    assert_eq!(machine.journal().phase, UpdatePhase::Aborted);
    machine.assert_installed_exe_untouched(&original);
    machine.wait_restarted();

    bytes.truncate(middle);
    fs::write(&machine.package, &bytes).unwrap();
    fs::remove_file(machine.marker("restarted")).unwrap();
    assert_eq!(run_checked(&machine, length, &sha256).code(), Some(2));
    let journal = machine.journal();
    assert_eq!(journal.phase, UpdatePhase::Aborted);
    assert!(journal.reason.unwrap().contains("length mismatch"));
    machine.assert_installed_exe_untouched(&original);
    machine.wait_restarted();
}

#[test]
fn a_link_in_place_of_the_package_is_not_followed() {
    let machine = Machine::new();
    let original = fs::read(&machine.exe).unwrap();
    let elsewhere = machine.dir.path().join("elsewhere.zip");
    let (length, sha256) = machine.write_package(&elsewhere, "exit 7");
    std::os::unix::fs::symlink(&elsewhere, &machine.package).unwrap();

    assert_eq!(run_checked(&machine, length, &sha256).code(), Some(2));
    assert_eq!(machine.journal().phase, UpdatePhase::Aborted);
    machine.assert_installed_exe_untouched(&original);
    machine.wait_restarted();
}

#[test]
fn the_package_the_agent_checked_passes_and_the_update_goes_on() {
    let machine = Machine::new();
    let original = fs::read(&machine.exe).unwrap();
    let (length, sha256) = machine.checked_package();

    // Upper-case hex is the same hash.
    let status = run_checked(&machine, length, &sha256.to_ascii_uppercase());

    // Past the check: staged, swapped, started; the new agent exits at once, so it is rolled back.
    assert_eq!(status.code(), Some(1), "rolled back");
    let journal = machine.journal();
    assert_eq!(journal.phase, UpdatePhase::RolledBack);
    assert!(journal.reason.unwrap().contains("exited"));
    assert!(machine.log().contains("package verified again"));
    machine.assert_installed_exe_untouched(&original);
    machine.wait_restarted();
}

#[test]
fn an_older_agent_that_passes_no_hash_still_gets_its_update() {
    let machine = Machine::new();
    machine.checked_package();

    assert_eq!(machine.run_updater(&[]).code(), Some(1), "rolled back");
    assert_eq!(machine.journal().phase, UpdatePhase::RolledBack);
    assert!(machine.log().contains("not checked again"));
    machine.wait_restarted();
}
