//! `cms-agent`'s rules, on its top-level modules (each edge collapsed to the first segment of
//! both ends, `net::http` -> `net`):
//!
//! - A1: the top-level modules use each other in no circle.
//! - A2: `net` and `ipc` never import `core` or `cli`.
//! - A3: `cli` is imported by nothing inside the library (only by `main.rs`).
//! - A4: `core` never imports `cli`.
//!
//! Must never: hold another crate's rules.

use super::graph::{Crate, Edge};
use super::source::BINARY_ROOT;

/// Every broken rule, each naming its edge.
fn broken(krate: &Crate) -> Vec<String> {
    super::top_level_rules(krate, "A1 top-level modules in a circle", edge_rules)
}

/// A2 to A4 on one edge between the top-level modules `from` and `to`.
fn edge_rules(from: Option<&str>, to: Option<&str>, edge: &Edge) -> Vec<String> {
    let mut broken = Vec::new();
    if matches!(from, Some("net" | "ipc")) && matches!(to, Some("core" | "cli")) {
        broken.push("A2 net and ipc never import core or cli");
    }
    if to == Some("cli") && from != Some("cli") && edge.from != BINARY_ROOT {
        broken.push("A3 cli is imported only by main.rs");
    }
    if from == Some("core") && to == Some("cli") {
        broken.push("A4 core never imports cli");
    }
    broken.into_iter().map(str::to_owned).collect()
}

#[test]
fn the_agent_keeps_its_layering() {
    let krate = Crate::read("crates/agent", Some("cms_agent"));
    super::assert_kept("cms-agent", &broken(&krate));
}

/// A small agent that keeps every rule, with `extra` modules added.
fn broken_with(extra: &[(&'static str, &'static str)]) -> Vec<String> {
    let mut sources = vec![
        ("main", "use cms_agent::cli::run;"),
        ("cli", "use crate::core::Agent;"),
        ("core", "mod agent;"),
        (
            "core::agent",
            "use crate::net::http::Client;\nuse crate::ipc::Server;",
        ),
        ("net", "mod http;"),
        ("net::http", "use crate::system::lock;"),
        ("ipc", "use crate::logging;"),
        ("system", ""),
        ("logging", ""),
    ];
    sources.extend_from_slice(extra);
    broken(&Crate::of_sources(&sources, Some("cms_agent")))
}

#[test]
fn an_agent_that_keeps_the_rules_passes() {
    assert_eq!(broken_with(&[]), Vec::<String>::new());
}

#[test]
fn a1_a_loop_of_top_level_modules_fails() {
    let broken = broken_with(&[
        ("system", "use crate::logging::init;"),
        ("logging", "use crate::system::X;"),
    ]);
    assert!(
        broken.iter().any(|b| b.starts_with("A1")
            && b.contains("src/logging.rs: `crate::system::X` (logging -> system)")),
        "{broken:?}"
    );
}

#[test]
fn a2_net_or_ipc_importing_core_or_cli_fails() {
    let broken = broken_with(&[
        ("net::http", "use crate::core::state::State;"),
        ("ipc", "use crate::cli::Args;"),
    ]);
    super::assert_names(
        &broken,
        "A2 net and ipc never import core or cli: src/net/http.rs: `crate::core::state::State` (net::http -> core)",
    );
    super::assert_names(
        &broken,
        "A2 net and ipc never import core or cli: src/ipc.rs: `crate::cli::Args` (ipc -> cli)",
    );
}

#[test]
fn a3_cli_imported_inside_the_library_fails() {
    let broken = broken_with(&[("logging", "use crate::cli::Verbosity;")]);
    super::assert_names(
        &broken,
        "A3 cli is imported only by main.rs: src/logging.rs: `crate::cli::Verbosity` (logging -> cli)",
    );
}

#[test]
fn a4_core_importing_cli_fails() {
    let broken = broken_with(&[("core::agent", "use crate::cli::Args;")]);
    super::assert_names(
        &broken,
        "A4 core never imports cli: src/core/agent.rs: `crate::cli::Args` (core::agent -> cli)",
    );
}
