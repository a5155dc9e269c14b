//! `cms-platform`'s rule: P1, its modules (files, full module paths) never use each other in
//! a circle. A module naming its own ancestors (`super::`, the API it implements, as
//! `system/windows.rs` does with `system`) is left out: the parent dispatching to its
//! implementation and the implementation naming the parent's types are one unit.
//!
//! Must never: hold another crate's rules.

use super::graph::Crate;
use super::source::is_inside;

/// Every broken rule.
fn broken(mut krate: Crate) -> Vec<String> {
    krate.edges.retain(|e| !is_inside(&e.from, &e.to));
    let graph = krate.graph(|m| (!m.is_empty()).then(|| m.to_owned()));
    graph
        .cycle()
        .map(|cycle| format!("P1 modules that use each other in a circle: {cycle}"))
        .into_iter()
        .collect()
}

#[test]
fn the_platform_modules_use_each_other_in_no_circle() {
    let krate = Crate::read("crates/platform", None);
    super::assert_kept("cms-platform", &broken(krate));
}

#[test]
fn p1_the_circle_through_fs_and_the_seam_is_found() {
    let krate = Crate::of_sources(
        &[
            (
                "fs",
                "use crate::system;\nfn w() { system::create_private_file() }",
            ),
            (
                "system",
                "mod windows;\npub use windows::SecurityDescriptor;",
            ),
            (
                "system::windows",
                "use super::SystemError;\nfn s() { crate::fs::write_atomic() }",
            ),
        ],
        None,
    );
    let broken = broken(krate);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].contains("fs -> system -> system::windows -> fs"),
        "{broken:?}"
    );
    assert!(
        broken[0]
            .contains("src/system/windows.rs: `crate::fs::write_atomic` (system::windows -> fs)"),
        "{broken:?}"
    );
}

#[test]
fn p1_an_implementation_naming_its_parent_is_no_circle() {
    let krate = Crate::of_sources(
        &[
            ("system", "mod unix;\nuse unix as imp;"),
            ("system::unix", "use super::SystemError;"),
        ],
        None,
    );
    assert_eq!(broken(krate), Vec::<String>::new());
}
