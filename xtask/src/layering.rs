//! The layering main.rs promises, checked on the source: which module uses which (`crate::`,
//! `super::` and child-module paths in code, test modules left out), that no module uses
//! another in a circle, and that no task module is used by anything but main.rs. Run with
//! `--nocapture` to see the edges.
//!
//! Must never: pass by reading nothing (it fails when it finds no modules or no tasks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`windows::wine`; the crate root is `""`) -> its code, test modules cut off.
fn modules() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    collect(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut found,
    );
    found
}

fn collect(dir: &Path, prefix: &str, found: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let Some(stem) = stem else { continue };
        let joined = if prefix.is_empty() {
            stem.clone()
        } else {
            format!("{prefix}::{stem}")
        };
        if path.is_dir() {
            collect(&path, &joined, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = match stem.as_str() {
                "main" if prefix.is_empty() => String::new(),
                "mod" => prefix.to_owned(),
                _ => joined,
            };
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            found.insert(name, code_of(&text));
        }
    }
}

/// `text` without comments and without its `#[cfg(test)] mod tests` (kept at the file's end).
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let next_is_tests = lines.peek().is_some_and(|l| l.starts_with("mod tests"));
        if line.trim() == "#[cfg(test)]" && next_is_tests {
            break;
        }
        code.push_str(line.split("//").next().unwrap_or_default());
        code.push('\n');
    }
    code
}

/// The identifier chain starting at `at` in `code` (`a::b::c`).
fn path_at(code: &str, at: usize) -> String {
    let rest = &code[at..];
    let end = rest
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_alphanumeric() || c == '_' || (c == ':' && rest[i..].starts_with("::")))
                && !(c == ':' && i > 0 && rest[..i].ends_with(':'))
        })
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].trim_end_matches(':').to_owned()
}

/// The longest known module that `path` (absolute, `a::b::Item`) starts with.
fn resolve(path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| known.contains_key(candidate))
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_owned())
}

/// Every module that `module` uses.
fn uses(module: &str, code: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    assert!(
        !code.contains("crate::{") && !code.contains("super::{"),
        "{module}: write one `use crate::a::b;` per path, so the layering test can read it"
    );
    let mut targets = BTreeSet::new();
    let mut add = |absolute: String| {
        if let Some(target) = resolve(&absolute, known) {
            targets.insert(target);
        } else if absolute.is_empty() || !absolute.contains("::") {
            targets.insert(absolute);
        }
    };
    for (at, _) in code.match_indices("crate::") {
        add(path_at(code, at + "crate::".len()));
    }
    for (at, _) in code.match_indices("super::") {
        let base = parent(module);
        let rest = path_at(code, at + "super::".len());
        let joined = [base.as_str(), rest.as_str()].join("::");
        add(resolve(joined.trim_start_matches("::"), known).unwrap_or(base));
    }
    for child in declared_children(code) {
        let full = if module.is_empty() {
            child.clone()
        } else {
            format!("{module}::{child}")
        };
        let used = code.match_indices(&format!("{child}::")).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        });
        if used && !module.is_empty() {
            targets.insert(full);
        }
    }
    targets.remove(module);
    targets
}

/// The `mod name;` declarations of a file.
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// The modules main.rs dispatches to (`"task" => some::module::run(&rest)`).
fn tasks(root: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    root.match_indices("::run(")
        .filter_map(|(at, _)| {
            let start = root[..at].rfind([' ', '>'])? + 1;
            known
                .contains_key(&root[start..at])
                .then(|| root[start..at].to_owned())
        })
        .collect()
}

/// A cycle through the graph, if any (the modules on it, in order).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn tasks_are_leaves_and_no_module_imports_in_a_circle() {
    let known = modules();
    let root = known.get("").cloned().unwrap_or_default();
    let tasks = tasks(&root, &known);
    assert!(
        known.len() > 20 && tasks.len() >= 7,
        "read {known:?}, tasks {tasks:?}"
    );
    let edges: BTreeMap<String, BTreeSet<String>> = known
        .iter()
        .filter(|(module, _)| !module.is_empty() && module.as_str() != "layering")
        .map(|(module, code)| (module.clone(), uses(module, code, &known)))
        .collect();
    for (module, targets) in &edges {
        let kind = if tasks.contains(module) { "task" } else { "" };
        let list: Vec<&str> = targets.iter().map(String::as_str).collect();
        println!("{module:<28} {kind:<5} -> {}", list.join(", "));
        for target in targets {
            assert!(
                !tasks.contains(target),
                "{module} uses the task {target}: move what it needs into a helper"
            );
            assert!(!target.is_empty(), "{module} uses main.rs");
        }
    }
    assert_eq!(find_cycle(&edges), None, "modules that import each other");
}

#[test]
fn a_cycle_is_found() {
    let edges: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    assert_eq!(
        find_cycle(&edges),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
