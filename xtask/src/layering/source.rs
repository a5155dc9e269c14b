//! A crate's `src/` read as modules: each `.rs` file under its module path (`a/b.rs` and
//! `a/b/mod.rs` are `a::b`; `lib.rs` is the crate root `""`; `main.rs` is the root too when
//! there is no `lib.rs`, and the binary root `main` beside a library), with its comments and
//! its test code (`#[cfg(test)]` items, test-only module files) cut off.
//!
//! Must never: read anything but the `src/` it is given, or keep test code in a module.

use std::collections::BTreeMap;
use std::path::Path;

/// The name of `main.rs` when the crate also has a library (it is a crate of its own then).
pub const BINARY_ROOT: &str = "main";

/// One module: the file it was read from (for messages) and its code.
#[derive(Debug, Clone)]
pub struct Module {
    /// `src/...` path of the file, from the workspace root.
    pub file: String,
    /// The code, without comments and test items.
    pub code: String,
}

/// Module path -> module.
pub type Modules = BTreeMap<String, Module>;

/// The modules of `dir/src`, `dir` relative to the workspace root (`crates/server`).
pub fn read(dir: &str) -> Modules {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = format!("{dir}/src");
    let has_lib = root.join(&src).join("lib.rs").is_file();
    let mut files = Vec::new();
    collect(&root, &src, "", has_lib, &mut files);
    let mut found = Modules::new();
    let mut test_only = Vec::new();
    for (name, file) in files {
        let text = std::fs::read_to_string(root.join(&file)).unwrap_or_default();
        let (code, test_children) = code_of(&text);
        test_only.extend(test_children.into_iter().map(|c| join(&name, &c)));
        found.insert(name, Module { file, code });
    }
    found.retain(|name, _| !test_only.iter().any(|t| name == t || is_inside(name, t)));
    found
}

/// `(module path, file)` of every `.rs` file under `root/dir`.
fn collect(root: &Path, dir: &str, prefix: &str, has_lib: bool, found: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let file = format!("{dir}/{file_name}");
        let joined = join(prefix, &stem);
        if path.is_dir() {
            collect(root, &file, &joined, has_lib, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = match stem.as_str() {
                "lib" if prefix.is_empty() => String::new(),
                "main" if prefix.is_empty() && has_lib => BINARY_ROOT.to_owned(),
                "main" if prefix.is_empty() => String::new(),
                "mod" => prefix.to_owned(),
                _ => joined,
            };
            found.push((name, file));
        }
    }
}

/// `parent::child` (`child` alone under the root).
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}::{child}")
    }
}

/// Whether `module` lies under `ancestor` (`a::b::c` under `a` and `a::b`; all under `""`).
pub fn is_inside(module: &str, ancestor: &str) -> bool {
    ancestor.is_empty() && !module.is_empty()
        || module
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// `text` without comments and test items, and the test-only child modules it declares.
pub fn code_of(text: &str) -> (String, Vec<String>) {
    let mut code = String::new();
    let mut test_children = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if is_test_attribute(line) {
            test_children.extend(skip_item(&mut lines));
            continue;
        }
        code.push_str(line.split("//").next().unwrap_or_default());
        code.push('\n');
    }
    (code, test_children)
}

fn is_test_attribute(line: &str) -> bool {
    let line = line.trim();
    line == "#[cfg(test)]" || line.starts_with("#[cfg(all(test,")
}

/// Skips the item after a test attribute (its other attributes, then one line, or up to the
/// closing brace at its indentation); the module's name when it is a `mod name;`.
fn skip_item<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Option<String> {
    let item = lines.find(|l| !l.trim_start().starts_with("#["))?;
    if let Some(child) = declared_child(item) {
        return Some(child);
    }
    let trimmed = item.trim_end();
    if trimmed.ends_with(';') || trimmed.ends_with(',') {
        return None;
    }
    let indent = &item[..item.len() - item.trim_start().len()];
    let closes =
        |l: &str| l.starts_with(indent) && matches!(l[indent.len()..].trim_end(), "}" | "};");
    lines.find(|l| closes(l));
    None
}

/// The name of a `mod name;` declaration (any visibility), if `line` is one.
pub fn declared_child(line: &str) -> Option<String> {
    let mut rest = line.trim();
    if let Some(after) = rest.strip_prefix("pub") {
        rest = match after.strip_prefix('(') {
            Some(inner) => inner.split_once(')')?.1,
            None => after,
        }
        .trim_start();
    }
    let name = rest.strip_prefix("mod ")?.strip_suffix(';')?.trim();
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_items_and_comments_are_cut_off() {
        let text = "use crate::a; // crate::b\n#[cfg(test)]\n#[allow(x)]\nmod tests {\n    use crate::c;\n}\n#[cfg(test)]\nmod golden;\n#[cfg(test)]\nuse crate::d;\nfn f() {}\n";
        let (code, children) = code_of(text);
        assert_eq!(code, "use crate::a; \nfn f() {}\n");
        assert_eq!(children, ["golden"]);
    }

    #[test]
    fn declarations_of_any_visibility_are_children() {
        assert_eq!(declared_child("pub(crate) mod db;").as_deref(), Some("db"));
        assert_eq!(declared_child("    mod unix;").as_deref(), Some("unix"));
        assert_eq!(declared_child("pub mod api;").as_deref(), Some("api"));
        assert_eq!(declared_child("mod tests {"), None);
    }

    #[test]
    fn inside_means_strictly_below() {
        assert!(is_inside("a::b", "a"));
        assert!(is_inside("a", ""));
        assert!(!is_inside("ab", "a"));
        assert!(!is_inside("a", "a"));
    }
}
