//! xtask's rules, as `main.rs` promises them: a task module (what `main.rs` dispatches to,
//! `"task" => some::module::run(&rest)`) is used by nothing but `main.rs`, no module uses
//! `main.rs`, and no modules use each other in a circle (full module paths).
//!
//! Must never: hold another crate's rules.

use std::collections::BTreeSet;

use super::graph::{Crate, find_cycle};
use super::source::Modules;

/// The modules main.rs dispatches to (`"task" => some::module::run(&rest)`).
fn tasks(root: &str, known: &Modules) -> BTreeSet<String> {
    root.match_indices("::run(")
        .filter_map(|(at, _)| {
            let start = root[..at].rfind([' ', '>'])? + 1;
            known
                .contains_key(&root[start..at])
                .then(|| root[start..at].to_owned())
        })
        .collect()
}

/// Every broken rule, each naming its edge.
fn broken(krate: &Crate, tasks: &BTreeSet<String>) -> Vec<String> {
    let mut broken = Vec::new();
    for edge in krate.edges.iter().filter(|e| !e.from.is_empty()) {
        if tasks.contains(&edge.to) {
            broken.push(format!(
                "uses a task, move what it needs into a helper: {edge}"
            ));
        }
        if edge.to.is_empty() {
            broken.push(format!("uses main.rs: {edge}"));
        }
    }
    let graph = krate.graph(|m| (!m.is_empty()).then(|| m.to_owned()));
    if let Some(cycle) = graph.cycle() {
        broken.push(format!("modules that import each other: {cycle}"));
    }
    broken
}

#[test]
fn tasks_are_leaves_and_no_module_imports_in_a_circle() {
    let krate = Crate::read("xtask", None);
    let root = krate
        .modules
        .get("")
        .map(|m| m.code.clone())
        .unwrap_or_default();
    let tasks = tasks(&root, &krate.modules);
    assert!(
        krate.modules.len() > 20 && tasks.len() >= 7,
        "read {:?}, tasks {tasks:?}",
        krate.modules.keys()
    );
    let graph = krate.graph(|m| (!m.is_empty()).then(|| m.to_owned()));
    for (module, targets) in &graph.edges {
        let kind = if tasks.contains(module) { "task" } else { "" };
        let list: Vec<&str> = targets.iter().map(String::as_str).collect();
        println!("{module:<28} {kind:<5} -> {}", list.join(", "));
    }
    super::assert_kept("xtask", &broken(&krate, &tasks));
}

#[test]
fn a_cycle_is_found() {
    let edges = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    assert_eq!(
        find_cycle(&edges),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}

#[test]
fn a_helper_using_a_task_or_main_fails() {
    let krate = Crate::of_sources(
        &[
            (
                "",
                "mod demo;\nmod util;\nfn run() { demo::run(&rest) }\nstatic X: u8 = 0;",
            ),
            ("demo", "use crate::util::step;"),
            ("util", "use crate::demo::Thing;\nuse crate::X;"),
        ],
        None,
    );
    let root = &krate.modules[""].code;
    let tasks = tasks(root, &krate.modules);
    assert_eq!(tasks, BTreeSet::from(["demo".to_owned()]));
    let broken = broken(&krate, &tasks);
    super::assert_names(
        &broken,
        "uses a task, move what it needs into a helper: src/util.rs: `crate::demo::Thing` (util -> demo)",
    );
    super::assert_names(
        &broken,
        "uses main.rs: src/util.rs: `crate::X` (util -> crate)",
    );
}
