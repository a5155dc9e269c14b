//! Which module uses which: every `crate::` path (and the library's name in `main.rs`), every
//! `super::`/`self::` path and every path through a declared child module, grouped imports
//! (`use crate::{a, b::{c, d}}`) spread out, each resolved to the longest module it names, and
//! a cycle search over such edges.
//!
//! Must never: judge an edge (the rules are in each crate's test) or drop one it read, other
//! than a module's use of itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::source::{self, BINARY_ROOT, Modules, join};

/// One use of a module by another, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The module that uses.
    pub from: String,
    /// The module used.
    pub to: String,
    /// The file it is written in.
    pub file: String,
    /// The path as written (grouped imports spread out): `crate::db::agents::list`.
    pub path: String,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: `{}` ({} -> {})",
            self.file,
            self.path,
            name(&self.from),
            name(&self.to)
        )
    }
}

/// A module's name in messages (the root is `crate`).
fn name(module: &str) -> &str {
    if module.is_empty() { "crate" } else { module }
}

/// A crate's modules and the edges between them.
#[derive(Debug)]
pub struct Crate {
    /// Module path -> module.
    pub modules: Modules,
    /// Every edge, in module order.
    pub edges: Vec<Edge>,
}

impl Crate {
    /// Reads `dir/src` (from the workspace root); `lib` is the library's name as `main.rs`
    /// writes it (`cms_server`). Panics when it finds no module but the roots, so a test
    /// never passes by reading nothing.
    pub fn read(dir: &str, lib: Option<&str>) -> Crate {
        let modules = source::read(dir);
        let found = modules
            .keys()
            .filter(|m| !m.is_empty() && m.as_str() != BINARY_ROOT)
            .count();
        assert!(found > 0, "read no modules under {dir}/src: {modules:?}");
        Crate::from_modules(modules, lib)
    }

    /// The graph of `modules`.
    pub fn from_modules(modules: Modules, lib: Option<&str>) -> Crate {
        let reexports = modules
            .get("")
            .map(|root| reexports(&root.code, &modules))
            .unwrap_or_default();
        let edges = modules
            .iter()
            .flat_map(|(module, m)| {
                let lib = lib.filter(|_| module == BINARY_ROOT);
                written_paths(&m.code, lib)
                    .into_iter()
                    .map(|written| Edge {
                        from: module.clone(),
                        to: written.resolve(module, &modules, &reexports),
                        file: m.file.clone(),
                        path: written.text,
                    })
                    .filter(|edge| edge.to != edge.from)
                    .collect::<Vec<_>>()
            })
            .collect();
        Crate { modules, edges }
    }

    /// Synthetic sources for tests: `(module path, code)`, files named after the modules.
    #[cfg(test)]
    pub fn of_sources(sources: &[(&str, &str)], lib: Option<&str>) -> Crate {
        let modules = sources
            .iter()
            .map(|(module, text)| {
                let file = format!("src/{}.rs", module.replace("::", "/"));
                let code = source::code_of(text).0;
                ((*module).to_owned(), source::Module { file, code })
            })
            .collect();
        Crate::from_modules(modules, lib)
    }

    /// The edges with each end mapped by `node` (`None` leaves the edge out), and for each
    /// mapped pair the first edge that gave it.
    pub fn graph(&self, node: impl Fn(&str) -> Option<String>) -> Graph<'_> {
        let mut graph = Graph::default();
        for edge in &self.edges {
            let (Some(from), Some(to)) = (node(&edge.from), node(&edge.to)) else {
                continue;
            };
            if from != to {
                graph
                    .witness
                    .entry((from.clone(), to.clone()))
                    .or_insert(edge);
                graph.edges.entry(from).or_default().insert(to);
            }
        }
        graph
    }
}

/// A graph over some naming of the modules, with one written edge behind each of its edges.
#[derive(Debug, Default)]
pub struct Graph<'a> {
    /// Node -> the nodes it uses.
    pub edges: BTreeMap<String, BTreeSet<String>>,
    witness: BTreeMap<(String, String), &'a Edge>,
}

impl Graph<'_> {
    /// A cycle, if any, as the written edges around it, one per line.
    pub fn cycle(&self) -> Option<String> {
        let nodes = find_cycle(&self.edges)?;
        let lines: Vec<String> = nodes
            .windows(2)
            .filter_map(|pair| self.witness.get(&(pair[0].clone(), pair[1].clone())))
            .map(|edge| format!("  {edge}"))
            .collect();
        Some(format!("{}\n{}", nodes.join(" -> "), lines.join("\n")))
    }
}

/// A path as written, and how it is anchored.
#[derive(Debug)]
struct Written {
    text: String,
    anchor: Anchor,
    /// The segments after the anchor.
    rest: String,
}

#[derive(Debug)]
enum Anchor {
    /// `crate::` (or the library's name in `main.rs`).
    Root,
    /// `super::` this many times.
    Up(usize),
    /// `self::` or a declared child module.
    Here,
}

impl Written {
    /// The module this path names.
    fn resolve(
        &self,
        module: &str,
        known: &Modules,
        reexports: &BTreeMap<String, String>,
    ) -> String {
        let base = match self.anchor {
            Anchor::Root => String::new(),
            Anchor::Up(n) => ancestor(module, n),
            Anchor::Here => module.to_owned(),
        };
        let first = self.rest.split("::").next().unwrap_or_default();
        match (longest_known(&join(&base, &self.rest), known), &self.anchor) {
            (Some(found), _) if !found.is_empty() => found,
            (_, Anchor::Root) => reexports.get(first).cloned().unwrap_or_default(),
            _ => base,
        }
    }
}

/// The module `n` levels above `module` (the root when there are fewer).
fn ancestor(module: &str, n: usize) -> String {
    let parts: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
    parts[..parts.len().saturating_sub(n)].join("::")
}

/// The longest known module that `path` (absolute, `a::b::Item`) starts with.
fn longest_known(path: &str, known: &Modules) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| known.contains_key(candidate))
}

/// Item name -> the module the crate root re-exports it from (`pub use server::serve;`).
fn reexports(root: &str, known: &Modules) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for (at, _) in root.match_indices("pub use ") {
        for path in tree_at(root, at + "pub use ".len()) {
            let item = path.rsplit("::").next().unwrap_or_default().to_owned();
            if let Some(module) = longest_known(&path, known) {
                found.insert(item, module);
            }
        }
    }
    found
}

/// Every path `module`'s `code` writes into the crate.
fn written_paths(code: &str, lib: Option<&str>) -> Vec<Written> {
    let mut found = anchored(code, "crate::", |tail| (Anchor::Root, tail.to_owned()));
    found.extend(anchored(code, "self::", |tail| {
        (Anchor::Here, tail.to_owned())
    }));
    found.extend(anchored(code, "super::", |tail| {
        let mut rest = tail;
        let mut up = 1;
        while let Some(more) = rest.strip_prefix("super::") {
            rest = more;
            up += 1;
        }
        (Anchor::Up(up), rest.to_owned())
    }));
    if let Some(lib) = lib {
        let prefix = format!("{lib}::");
        found.extend(anchored(code, &prefix, |tail| {
            (Anchor::Root, tail.to_owned())
        }));
    }
    found.extend(child_paths(code));
    found
}

/// The paths that start with `prefix` in `code`, anchored by `anchor` (given what follows
/// the prefix).
fn anchored(code: &str, prefix: &str, anchor: fn(&str) -> (Anchor, String)) -> Vec<Written> {
    starts_of(code, prefix)
        .flat_map(|at| tree_at(code, at + prefix.len()))
        .map(|tail| {
            let (anchor, rest) = anchor(&tail);
            Written {
                text: format!("{prefix}{tail}"),
                anchor,
                rest,
            }
        })
        .collect()
}

/// Paths through the modules `code` declares (`child::item`, `use child as alias;`).
fn child_paths(code: &str) -> Vec<Written> {
    let mut found = Vec::new();
    for child in code.lines().filter_map(source::declared_child) {
        let prefix = format!("{child}::");
        let through = anchored(code, &prefix, |tail| (Anchor::Here, tail.to_owned()));
        found.extend(through.into_iter().map(|w| Written {
            rest: w.text.clone(),
            ..w
        }));
        let aliased = [format!("use {child} as "), format!("use {child};")];
        if aliased.iter().any(|a| code.contains(a.as_str())) {
            found.push(Written {
                text: child.clone(),
                anchor: Anchor::Here,
                rest: child,
            });
        }
    }
    found
}

/// Where `prefix` starts a path in `code` (not inside a longer name or path).
fn starts_of<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(prefix)
        .map(|(at, _)| at)
        .filter(move |&at| {
            !code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
}

/// The paths of the use tree starting at `at`: `a::b` gives `a::b`, `a::{b, c::{d, e}}` gives
/// `a::b`, `a::c::d` and `a::c::e` (`self` in a group names the group's own path).
fn tree_at(code: &str, at: usize) -> Vec<String> {
    let rest = &code[at..];
    let mut chain = String::new();
    let mut i = 0;
    loop {
        if let Some(inner) = rest[i..].strip_prefix('{') {
            let prefix = chain.trim_end_matches("::");
            return group(inner)
                .into_iter()
                .flat_map(|part| tree_at(part, 0))
                .map(|tail| match tail.as_str() {
                    "self" => prefix.to_owned(),
                    _ => join(prefix, &tail),
                })
                .collect();
        }
        let len = rest[i..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - i);
        chain.push_str(&rest[i..i + len]);
        i += len;
        if !rest[i..].starts_with("::") {
            return vec![chain];
        }
        chain.push_str("::");
        i += 2;
    }
}

/// The top-level parts of a `{...}` group whose opening brace is just before `text`.
fn group(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                parts.push(text[start..i].trim());
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.retain(|p| !p.is_empty() && *p != "*");
    parts
}

/// A cycle through the graph, if any (the nodes on it, in order, the first one again last).
pub fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
