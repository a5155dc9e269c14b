//! config.json on disk, through the real binary: migration from v1 and corrupt files.

#![cfg(unix)] // real processes, signals and the Linux server binary; not for Wine
#![allow(clippy::unwrap_used)] // integration tests: a failed call is a failed test

mod util;

use std::path::Path;

use util::{Agent, Server, agent_command, wait_for};

fn files_starting_with(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

#[test]
fn a_v1_config_is_backed_up_and_migrated_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    std::fs::create_dir_all(&data).unwrap();
    let v1 = format!(
        r#"{{"config_version": 1, "server": "{}", "version": "0.9.0", "status_interval": 7, "poll_interval": 900}}"#,
        server.url
    );
    std::fs::write(data.join("config.json"), &v1).unwrap();

    let mut agent = Agent::start(&data, &[]);
    server.wait_for_agent_state("IDLE");
    assert_eq!(agent.stop().code(), Some(0));

    assert_eq!(
        std::fs::read_to_string(data.join("config.v1.bak.json")).unwrap(),
        v1
    );
    let migrated: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("config.json")).unwrap()).unwrap();
    assert_eq!(migrated["config_version"], 3);
    assert_eq!(migrated["server_url"], server.url.as_str());
    assert_eq!(migrated["current_version"], "0.9.0");
    assert_eq!(migrated["intervals"]["status_secs"], 7);
    assert_eq!(migrated["intervals"]["update_poll_secs"], 900);
    assert!(migrated["credentials"]["agent_id"].is_string());
    assert!(agent.log().contains("config migrated"));
}

#[test]
fn a_corrupt_config_is_kept_aside_and_reported_when_the_agent_can_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("config.json"),
        "{\"config_version\": 2, \"server_url\": ",
    )
    .unwrap();

    let mut agent = Agent::start(&data, &["--server", &server.url]);
    server.wait_for_agent_state("IDLE");
    let report = server.wait_for_report("config_corrupt");
    assert!(report.message.contains("kept aside"), "{}", report.message);
    let aside = files_starting_with(&data, "config.json.corrupt-");
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&aside[0]).unwrap(),
        "{\"config_version\": 2, \"server_url\": "
    );
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn a_corrupt_config_without_a_server_url_is_exit_2_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "\u{0}\u{1}garbage").unwrap();
    let output = agent_command(dir.path(), &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        files_starting_with(dir.path(), "config.json.corrupt-").len(),
        1
    );
    assert!(
        !dir.path().join("config.json").exists(),
        "nothing may be written in its place"
    );
    let buffered = std::fs::read_to_string(dir.path().join("error_reports.jsonl")).unwrap();
    assert!(
        buffered.contains("config_corrupt"),
        "the report waits for the next run: {buffered}"
    );
}

/// The six kinds of damage a fleet meets, each one started as the autostart entry starts the
/// agent (only `--data-dir`) and once more as an operator re-runs it with `--server`: the agent
/// comes up with its identity and its server every time, and the server never sees a second
/// agent.
#[test]
fn six_kinds_of_damage_keep_the_identity_and_the_server_and_make_no_ghost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let data = dir.path().join("agent");
    let mut agent = Agent::start(&data, &["--server", &server.url]);
    let identity = server.wait_for_agent_state("IDLE").agent_id;
    assert_eq!(agent.stop().code(), Some(0));
    let good = std::fs::read(data.join("config.json")).unwrap();
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut config: serde_json::Value = serde_json::from_slice(&good).unwrap();
        change(&mut config);
        serde_json::to_vec(&config).unwrap()
    };
    let damages: [(&str, Vec<u8>); 6] = [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage", b"<html>not a configuration</html>".to_vec()),
        ("NUL bytes", vec![0; 4096]),
        (
            "a mistyped field",
            with(&|c| c["intervals"]["status_secs"] = "sixty".into()),
        ),
        (
            "an unreadable schema version",
            with(&|c| c["config_version"] = "two".into()),
        ),
    ];
    let mut starts = agent.idle_count();
    for (kind, damaged) in &damages {
        for args in [vec![], vec!["--server", server.url.as_str()]] {
            std::fs::write(data.join("config.json"), damaged).unwrap();
            let mut agent = Agent::start(&data, &args);
            wait_for(
                &format!("a start on {kind} config ({args:?}) to reach IDLE"),
                || (agent.idle_count() > starts).then_some(()),
            );
            starts = agent.idle_count();
            let agents = server.agents();
            assert_eq!(
                agents.len(),
                1,
                "{kind} {args:?}: a second identity registered"
            );
            assert_eq!(agents[0].agent_id, identity, "{kind} {args:?}");
            assert_eq!(agent.stop().code(), Some(0), "{kind} {args:?}");
            let rebuilt: serde_json::Value =
                serde_json::from_slice(&std::fs::read(data.join("config.json")).unwrap()).unwrap();
            assert_eq!(
                rebuilt["credentials"]["agent_id"],
                identity.as_str(),
                "{kind}"
            );
            assert_eq!(rebuilt["server_url"], server.url.as_str(), "{kind}");
        }
    }
    assert_eq!(
        files_starting_with(&data, "config.json.corrupt-").len(),
        2 * damages.len(),
        "every damaged file is kept aside"
    );
    let reported = wait_for("a config_corrupt report for every damaged start", || {
        let reports: Vec<_> = server
            .errors()
            .into_iter()
            .filter(|e| e.kind == "config_corrupt")
            .collect();
        (reports.len() == 2 * damages.len()).then_some(reports)
    });
    assert!(
        reported.iter().all(|r| r.message.contains("rebuilt from")),
        "{reported:#?}"
    );
}
