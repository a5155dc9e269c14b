//! `ConfigManager`'s unit tests: loading, migration, recovery and saving.

use super::*;
use std::fs;

use crate::system;

fn load_text(text: &str) -> (tempfile::TempDir, PathBuf, ConfigManager, Vec<ConfigNotice>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    fs::write(&path, text).unwrap();
    let (manager, notices) = ConfigManager::load(&path, SecretScope::User).unwrap();
    (dir, path, manager, notices)
}

#[test]
fn missing_file_is_a_fresh_install_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let (manager, notices) = ConfigManager::load(&path, SecretScope::User).unwrap();
    assert_eq!(manager.config(), &Config::default());
    assert!(notices.is_empty());
    assert!(!path.exists());
}

#[test]
fn one_server_is_saved_as_before_and_a_list_beside_it() {
    let credentials = Credentials {
        agent_id: "a1".into(),
        agent_token: "t1".into(),
    };
    let mut config = Config {
        server_url: Some("https://a.example".into()),
        credentials: Some(credentials),
        ..Config::default()
    };
    config.set_servers(&["https://a.example".into()]);
    assert!(config.server_urls.is_empty());
    assert!(config.credentials.is_some(), "same server, same identity");
    let json = serde_json::to_value(&config).unwrap();
    assert!(json.get("server_urls").is_none(), "{json}");

    let replicas = [
        "https://a.example".to_owned(),
        "https://b.example".to_owned(),
    ];
    config.set_servers(&replicas);
    assert_eq!(config.servers(), replicas);
    assert!(
        config.credentials.is_some(),
        "the first server is unchanged"
    );
    assert_eq!(config.server_url.as_deref(), Some("https://a.example"));

    config.set_servers(&["https://c.example".into()]);
    assert_eq!(config.servers(), ["https://c.example"]);
    assert!(
        config.credentials.is_none(),
        "another backend, another identity"
    );
}

#[test]
fn v1_is_backed_up_migrated_and_saved() {
    let v1 = r#"{"config_version":1,"server":"http://127.0.0.1:1","version":"0.9.0",
        "status_interval":15,"poll_interval":120,"agent_id":"a1","agent_token":"t1"}"#;
    let (_dir, path, manager, notices) = load_text(v1);
    assert!(notices.is_empty());
    let config = manager.config();
    assert_eq!(config.config_version, CONFIG_VERSION);
    assert_eq!(config.server_url.as_deref(), Some("http://127.0.0.1:1"));
    assert_eq!(config.current_version.as_deref(), Some("0.9.0"));
    assert_eq!(config.intervals.status_secs, 15);
    assert_eq!(config.intervals.update_poll_secs, 120);
    assert_eq!(config.credentials.as_ref().unwrap().agent_token, "t1");
    assert_eq!(fs::read_to_string(backup_path(&path, 1)).unwrap(), v1);
    let saved: Config = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(&saved, config);
}

#[test]
fn a_file_without_version_is_treated_as_v1() {
    let (_dir, _path, manager, _) = load_text(r#"{"server":"http://127.0.0.1:2"}"#);
    assert_eq!(
        manager.config().server_url.as_deref(),
        Some("http://127.0.0.1:2")
    );
}

#[test]
fn garbage_is_kept_aside_byte_for_byte() {
    let (dir, path, manager, notices) = load_text("{ not json");
    assert_eq!(manager.config(), &Config::default());
    assert_eq!(notices[0].kind, "config_corrupt");
    assert!(!path.exists());
    let aside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::read_to_string(&aside[0]).unwrap(), "{ not json");
}

#[test]
fn a_failing_migration_leaves_the_original_aside_and_unmodified() {
    let v1 = r#"{"config_version":1,"status_interval":"soon"}"#;
    let (dir, _path, _manager, notices) = load_text(v1);
    assert_eq!(notices[0].kind, "config_migration_failed");
    assert!(notices[0].message.contains("status_interval"));
    let kept = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("corrupt"))
        .unwrap();
    assert_eq!(fs::read_to_string(kept).unwrap(), v1);
}

#[test]
fn a_newer_schema_falls_back_to_the_backup_made_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let ours = Config {
        server_url: Some("http://127.0.0.1:3".into()),
        ..Config::default()
    };
    fs::write(
        backup_path(&path, CONFIG_VERSION),
        serde_json::to_vec(&ours).unwrap(),
    )
    .unwrap();
    let newer = format!(
        r#"{{"config_version":{},"whatever":true}}"#,
        CONFIG_VERSION + 1
    );
    fs::write(&path, newer).unwrap();
    let (manager, notices) = ConfigManager::load(&path, SecretScope::User).unwrap();
    assert_eq!(manager.config(), &ours);
    assert_eq!(notices[0].kind, "config_downgraded");
}

#[test]
fn a_newer_schema_without_backup_is_kept_aside() {
    let (_dir, _path, manager, notices) = load_text(r#"{"config_version":9}"#);
    assert_eq!(manager.config(), &Config::default());
    assert_eq!(notices[0].kind, "config_migration_failed");
}

/// A saved configuration with a server and an identity, as a registered agent leaves it.
fn registered(path: &Path) -> Config {
    let (mut manager, _) = ConfigManager::load(path, SecretScope::User).unwrap();
    manager
        .update(|c| {
            c.server_url = Some("http://127.0.0.1:4".into());
            c.credentials = Some(Credentials {
                agent_id: "a4".into(),
                agent_token: "t4".into(),
            });
            c.intervals.update_poll_secs = 900;
        })
        .unwrap();
    manager.config().clone()
}

#[test]
fn every_kind_of_damage_is_rebuilt_from_the_last_good_copy() {
    let damages: [&[u8]; 5] = [
        b"",
        b"{\"config_version\": 3, \"server_url\": \"http://127.0.0.1:4\", \"credent",
        b"garbage \xff\xfe",
        &[0u8; 512],
        b"[1, 2, 3]",
    ];
    for damage in damages {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let saved = registered(&path);
        fs::write(&path, damage).unwrap();
        let (manager, notices) = ConfigManager::load(&path, SecretScope::User).unwrap();
        assert_eq!(manager.config(), &saved, "damage {damage:?}");
        assert_eq!(notices[0].kind, "config_corrupt");
        assert!(notices[0].message.contains(LAST_GOOD_NAME), "{notices:?}");
        fs::write(&path, damage).unwrap();
        ConfigManager::load(&path, SecretScope::User).unwrap(); // the same second: both copies are kept
        let aside = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("corrupt")
            })
            .count();
        assert_eq!(aside, 2);
        let rewritten: Config = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(rewritten, saved);
    }
}

#[test]
fn a_mistyped_field_costs_only_that_field_even_without_a_last_good_copy() {
    let text = r#"{"config_version":3,"server_url":"http://127.0.0.1:5",
        "credentials":{"agent_id":"a5","agent_token":"t5"},
        "intervals":{"status_secs":"sixty","update_poll_secs":900},"error_buffer_max_reports":"many"}"#;
    let (_dir, path, manager, notices) = load_text(text);
    let config = manager.config();
    assert_eq!(config.server_url.as_deref(), Some("http://127.0.0.1:5"));
    assert_eq!(config.credentials.as_ref().unwrap().agent_id, "a5");
    assert_eq!(config.intervals.update_poll_secs, 900);
    assert_eq!(config.intervals.status_secs, DEFAULT_STATUS_SECS);
    assert_eq!(config.error_buffer_max_reports, DEFAULT_ERROR_BUFFER_MAX);
    let message = &notices[0].message;
    assert!(message.contains("intervals.status_secs"), "{message}");
    assert!(message.contains("error_buffer_max_reports"), "{message}");
    assert!(message.contains("kept aside"), "{message}");
    let rewritten: Config = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(&rewritten, config);
}

#[test]
fn the_damaged_file_wins_over_the_last_good_copy_where_it_still_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    registered(&path);
    let edited =
        r#"{"config_version":3,"server_url":"http://127.0.0.1:6","intervals":{"status_secs":"x"}}"#;
    fs::write(&path, edited).unwrap();
    let (manager, _) = ConfigManager::load(&path, SecretScope::User).unwrap();
    assert_eq!(
        manager.config().server_url.as_deref(),
        Some("http://127.0.0.1:6")
    );
    assert_eq!(
        manager.config().credentials.as_ref().unwrap().agent_id,
        "a4"
    );
}

#[test]
fn a_missing_file_beside_a_last_good_copy_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let saved = registered(&path);
    fs::remove_file(&path).unwrap();
    let (manager, notices) = ConfigManager::load(&path, SecretScope::User).unwrap();
    assert_eq!(manager.config(), &saved);
    assert_eq!(notices[0].kind, "config_restored");
    assert!(path.exists());
}

#[test]
fn the_enrollment_token_is_kept_but_never_shown_by_debug() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let (mut manager, _) = ConfigManager::load(&path, SecretScope::User).unwrap();
    manager
        .update(|c| c.enrollment_token = Some(EnrollmentToken::new("enroll-me".into())))
        .unwrap();
    assert!(!format!("{manager:?}").contains("enroll-me"));
    let (reloaded, _) = ConfigManager::load(&path, SecretScope::User).unwrap();
    let token = reloaded.config().enrollment_token.as_ref().unwrap();
    assert_eq!(token.expose(), "enroll-me");
}

#[test]
fn update_writes_only_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let (mut manager, _) = ConfigManager::load(&path, SecretScope::User).unwrap();
    manager.update(|_| {}).unwrap();
    assert!(!path.exists());
    manager
        .update(|c| c.current_version = Some("1.2.3".into()))
        .unwrap();
    let (reloaded, _) = ConfigManager::load(&path, SecretScope::User).unwrap();
    assert_eq!(reloaded.config().current_version.as_deref(), Some("1.2.3"));
}

/// The secrets of the v2 file of [`SEALED_V2`].
const SECRETS: [&str; 3] = [
    "token-in-clear-7",
    "pending-in-clear-7",
    "enroll-in-clear-7",
];
const SEALED_V2: &str = r#"{"config_version":2,"server_url":"http://127.0.0.1:7",
    "credentials":{"agent_id":"a7","agent_token":"token-in-clear-7"},
    "pending_credentials":{"agent_id":"a7","agent_token":"pending-in-clear-7"},
    "enrollment_token":"enroll-in-clear-7"}"#;

/// Whether `file` holds the secrets sealed (where the platform seals) and never in clear.
fn assert_sealed_on_disk(file: &Path) {
    let text = fs::read_to_string(file).unwrap();
    for secret in SECRETS {
        assert_eq!(
            text.contains(secret),
            !system::SEALS_AT_REST,
            "{}: {text}",
            file.display()
        );
    }
    let marks = text.matches(sealed::SEALED_MARK).count();
    assert_eq!(marks, if system::SEALS_AT_REST { 3 } else { 0 }, "{text}");
}

fn assert_secrets(config: &Config) {
    let credentials = config.credentials.as_ref().unwrap();
    assert_eq!(credentials.agent_id, "a7");
    assert_eq!(credentials.agent_token, SECRETS[0]);
    let pending = config.pending_credentials.as_ref().unwrap();
    assert_eq!(pending.agent_token, SECRETS[1]);
    let enrollment = config.enrollment_token.as_ref().unwrap();
    assert_eq!(enrollment.expose(), SECRETS[2]);
}

#[test]
fn v2_is_migrated_to_v3_with_its_secrets_sealed_and_its_backup_left_for_an_older_agent() {
    for scope in [SecretScope::User, SecretScope::System] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, SEALED_V2).unwrap();
        let (manager, notices) = ConfigManager::load(&path, scope).unwrap();
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(manager.config().config_version, 3);
        assert_secrets(manager.config());
        assert_sealed_on_disk(&path);
        assert_sealed_on_disk(&path.with_file_name(LAST_GOOD_NAME));
        // What an older agent restores after a rollback: the file as it was, which it reads.
        let backup = fs::read_to_string(backup_path(&path, 2)).unwrap();
        assert_eq!(backup, SEALED_V2);

        let (reloaded, notices) = ConfigManager::load(&path, scope).unwrap();
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(reloaded.config(), manager.config(), "{scope:?}");
    }
}

#[test]
fn a_plain_secret_in_a_v3_file_is_read_and_sealed_at_once() {
    let v3 = SEALED_V2.replace(r#""config_version":2"#, r#""config_version":3"#);
    let (_dir, path, manager, notices) = load_text(&v3);
    assert!(notices.is_empty(), "{notices:?}");
    assert_secrets(manager.config());
    assert_sealed_on_disk(&path);
    assert!(!backup_path(&path, 2).exists(), "no migration, no backup");
}

#[test]
fn a_sealed_secret_that_cannot_be_opened_costs_only_that_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let saved = registered(&path);
    let damaged = r#"{"config_version":3,"server_url":"http://127.0.0.1:8",
        "credentials":{"agent_id":"a4","agent_token":"dpapi:c2VhbGVkIGVsc2V3aGVyZQ=="}}"#;
    fs::write(&path, damaged).unwrap();
    let (manager, notices) = ConfigManager::load(&path, SecretScope::User).unwrap();
    assert_eq!(notices[0].kind, "config_corrupt");
    assert!(!notices[0].message.contains("c2VhbGVk"), "{notices:?}");
    let config = manager.config();
    assert_eq!(config.server_url.as_deref(), Some("http://127.0.0.1:8"));
    assert_eq!(
        config.credentials, saved.credentials,
        "the last good copy's"
    );
}

#[test]
fn the_download_limit_is_optional_and_left_out_when_unset() {
    let without: Config =
        serde_json::from_str(r#"{"config_version":3,"server_url":"https://a.example"}"#).unwrap();
    assert_eq!(without.download_limit_kbps, None, "older files load");
    let json = serde_json::to_value(&without).unwrap();
    assert!(json.get("download_limit_kbps").is_none(), "{json}");
    let limited = Config {
        download_limit_kbps: Some(800),
        ..without
    };
    let json = serde_json::to_value(&limited).unwrap();
    assert_eq!(json["download_limit_kbps"], 800);
    assert_eq!(serde_json::from_value::<Config>(json).unwrap(), limited);
}
