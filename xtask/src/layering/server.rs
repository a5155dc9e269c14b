//! `cms-server`'s rules, on its top-level modules (each edge collapsed to the first segment of
//! both ends, `rollout::funnel` -> `rollout`):
//!
//! - S1: no folder-level loops: the top-level modules use each other in no circle.
//! - S2: `db` (and everything under it) imports only `db` and the utilities [`DB_MAY_USE`].
//! - S3: `api` is imported by nothing but `server`, the composition root that builds the router.
//! - S4: `cli` is imported by nothing inside the library (only by `main.rs`).
//! - S5: no top-level module is named `dashboard` (only web assets and page routes are called
//!   dashboard, under `api/` or `web/`).
//!
//! Must never: hold another crate's rules.

use super::graph::{Crate, Edge};
use super::source::BINARY_ROOT;

/// What `db` may import besides itself.
const DB_MAY_USE: [&str; 3] = ["clock", "files", "logtext"];

/// Every broken rule, each naming its edge.
fn broken(krate: &Crate) -> Vec<String> {
    let mut broken = super::top_level_rules(krate, "S1 a folder-level loop", edge_rules);
    if let Some(module) = krate.modules.get("dashboard") {
        broken.push(format!(
            "S5 no top-level module named dashboard: {}",
            module.file
        ));
    }
    broken
}

/// S2 to S4 on one edge between the top-level modules `from` and `to`.
fn edge_rules(from: Option<&str>, to: Option<&str>, edge: &Edge) -> Vec<String> {
    let mut broken = Vec::new();
    if from == Some("db") && to.is_some_and(|to| to != "db" && !DB_MAY_USE.contains(&to)) {
        broken.push(format!("S2 db imports only db, {}", DB_MAY_USE.join(", ")));
    }
    if to == Some("api") && !matches!(from, Some("api" | "server")) {
        broken.push("S3 api is imported only by server".to_owned());
    }
    if to == Some("cli") && from != Some("cli") && edge.from != BINARY_ROOT {
        broken.push("S4 cli is imported only by main.rs".to_owned());
    }
    broken
}

#[test]
fn the_server_keeps_its_layering() {
    let krate = Crate::read("crates/server", Some("cms_server"));
    super::assert_kept("cms-server", &broken(&krate));
}

/// A small server that keeps every rule, with `extra` modules added.
fn server_with(extra: &[(&'static str, &'static str)]) -> Crate {
    let mut sources = vec![
        ("main", "use cms_server::cli::run;"),
        ("cli", "use crate::server::serve;\nuse crate::db::Db;"),
        ("server", "use crate::api::router;"),
        ("api", "mod fleet;"),
        ("api::fleet", "use crate::rollout::funnel::count;"),
        ("rollout", "mod funnel;"),
        ("rollout::funnel", "use crate::db::Db;"),
        ("db", "mod agents;"),
        ("db::agents", "use crate::clock;\nuse super::Db;"),
        ("clock", ""),
    ];
    sources.extend_from_slice(extra);
    Crate::of_sources(&sources, Some("cms_server"))
}

fn broken_with(extra: &[(&'static str, &'static str)]) -> Vec<String> {
    broken(&server_with(extra))
}

#[test]
fn a_server_that_keeps_the_rules_passes() {
    assert_eq!(broken_with(&[]), Vec::<String>::new());
}

#[test]
fn s1_a_folder_level_loop_fails() {
    let broken = broken_with(&[("clock", "use crate::rollout::funnel::X;")]);
    assert!(
        broken.iter().any(|b| b.starts_with("S1")
            && b.contains("src/clock.rs: `crate::rollout::funnel::X` (clock -> rollout::funnel)")),
        "{broken:?}"
    );
}

#[test]
fn s2_db_importing_a_domain_module_fails() {
    let broken = broken_with(&[("db::releases", "use crate::rollout::Rule;")]);
    super::assert_names(
        &broken,
        "S2 db imports only db, clock, files, logtext: src/db/releases.rs: `crate::rollout::Rule` (db::releases -> rollout)",
    );
}

#[test]
fn s3_api_imported_outside_server_fails() {
    let broken = broken_with(&[("ws", "use crate::api::AppState;")]);
    assert_eq!(
        broken,
        ["S3 api is imported only by server: src/ws.rs: `crate::api::AppState` (ws -> api)"]
    );
}

#[test]
fn s4_cli_imported_inside_the_library_fails() {
    let broken = broken_with(&[("server", "use crate::api::router;\nuse crate::cli::Args;")]);
    super::assert_names(
        &broken,
        "S4 cli is imported only by main.rs: src/server.rs: `crate::cli::Args` (server -> cli)",
    );
}

#[test]
fn s5_a_top_level_dashboard_module_fails() {
    let broken = broken_with(&[("dashboard", "")]);
    assert_eq!(
        broken,
        ["S5 no top-level module named dashboard: src/dashboard.rs"]
    );
}
