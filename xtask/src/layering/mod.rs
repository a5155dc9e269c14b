//! The layering `docs/ARCHITECTURE.md` ("Layering rules") promises, checked on the source of
//! every crate that has rules: which module uses which ([`graph`], read by [`source`]), and one
//! test per crate with that crate's rules, written once, there ([`xtask`], [`server`],
//! [`agent`], [`platform`]). A broken rule fails with the edge that breaks it: the file and
//! the path as written. Run with `--nocapture` to see xtask's edges.
//!
//! Must never: pass by reading nothing (reading a crate fails when it finds no modules), or
//! look at test code (`#[cfg(test)]` items and test-only modules are cut off).

mod agent;
mod graph;
mod platform;
mod server;
mod source;
mod xtask;

use graph::{Crate, Edge};

/// The first segment of a module path (`rollout::funnel` -> `rollout`); `None` for the crate
/// root and for `main.rs` beside a library, which are not folders.
fn top(module: &str) -> Option<String> {
    let first = module.split("::").next()?;
    (!first.is_empty() && first != source::BINARY_ROOT).then(|| first.to_owned())
}

/// A crate's rules on its top-level modules: `loop_rule` when they use each other in a circle,
/// and for every edge the rules `edge_rules` says it breaks (given the top-level module of
/// each end), each with the edge.
fn top_level_rules(
    krate: &Crate,
    loop_rule: &str,
    edge_rules: impl Fn(Option<&str>, Option<&str>, &Edge) -> Vec<String>,
) -> Vec<String> {
    let cycle = krate.graph(top).cycle();
    let mut broken: Vec<String> = cycle
        .map(|c| format!("{loop_rule}: {c}"))
        .into_iter()
        .collect();
    for edge in &krate.edges {
        let (from, to) = (top(&edge.from), top(&edge.to));
        let rules = edge_rules(from.as_deref(), to.as_deref(), edge);
        broken.extend(rules.into_iter().map(|rule| format!("{rule}: {edge}")));
    }
    broken
}

/// Fails with every broken rule, one per line.
fn assert_kept(crate_name: &str, broken: &[String]) {
    assert!(
        broken.is_empty(),
        "{crate_name} breaks its layering rules (docs/ARCHITECTURE.md, \"Layering rules\"):\n{}",
        broken.join("\n")
    );
}

/// Fails unless `broken` holds the line `expected` (a rule's test on a synthetic crate).
fn assert_names(broken: &[String], expected: &str) {
    assert!(
        broken.iter().any(|b| b == expected),
        "no {expected:?} in {broken:#?}"
    );
}

#[cfg(test)]
mod tests {
    use super::graph::Crate;

    fn targets(krate: &Crate, from: &str) -> Vec<String> {
        krate
            .edges
            .iter()
            .filter(|e| e.from == from)
            .map(|e| e.to.clone())
            .collect()
    }

    #[test]
    fn grouped_imports_are_spread_out_and_resolved() {
        let krate = Crate::of_sources(
            &[
                ("", "pub use server::serve;\npub mod a;\npub mod server;"),
                (
                    "a",
                    "use crate::{server, db::{x::Item, self}};\nuse crate::serve;",
                ),
                ("db", ""),
                ("db::x", ""),
                ("server", ""),
            ],
            None,
        );
        assert_eq!(targets(&krate, "a"), ["server", "db::x", "db", "server"]);
        let paths: Vec<&str> = krate.edges.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"crate::db::x::Item"), "{paths:?}");
    }

    #[test]
    fn super_self_and_child_paths_are_edges() {
        let krate = Crate::of_sources(
            &[
                (
                    "a",
                    "mod b;\nmod c;\nuse c as imp;\nfn f() { b::g(); self::d::h() }",
                ),
                ("a::b", "use super::c::X;\nuse super::super::z;"),
                ("a::c", "use super::{Y, b};"),
                ("a::d", ""),
                ("z", ""),
            ],
            None,
        );
        assert_eq!(targets(&krate, "a"), ["a::d", "a::b", "a::c"]);
        assert_eq!(targets(&krate, "a::b"), ["a::c", "z"]);
        assert_eq!(targets(&krate, "a::c"), ["a", "a::b"]);
    }

    #[test]
    fn main_beside_a_library_names_it() {
        let krate = Crate::of_sources(
            &[("main", "use cms_server::cli::run;"), ("cli", "")],
            Some("cms_server"),
        );
        assert_eq!(targets(&krate, "main"), ["cli"]);
        let edge = &krate.edges[0];
        assert_eq!(
            edge.to_string(),
            "src/main.rs: `cms_server::cli::run` (main -> cli)"
        );
    }

    #[test]
    fn test_code_makes_no_edge() {
        let code = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\n";
        let krate = Crate::of_sources(&[("m", code), ("a", ""), ("b", "")], None);
        assert_eq!(targets(&krate, "m"), ["a"]);
    }
}
