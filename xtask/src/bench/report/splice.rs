//! One step's part of `BENCHMARKS.md` and `benchmarks.json`, replaced in place: a section
//! between two markers in the page and one entry under `results` in the JSON, so a step run
//! alone (`cargo xtask bench --replicas-only`, `--fleet-page-only`, `--delta-only`,
//! `--push-only`) updates
//! its own numbers and leaves an earlier full run's as they were.
//!
//! This module only edits the pages: it never measures or formats a result.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::super::machine::Machine;

/// Where a step's numbers live in the two pages.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// The marker that opens the step's part of `BENCHMARKS.md`.
    pub begin: &'static str,
    /// The marker that closes it.
    pub end: &'static str,
    /// Its key under `results` in `benchmarks.json`.
    pub json_key: &'static str,
}

impl Section {
    /// Writes `markdown` (markers included) into `dir/BENCHMARKS.md` in place of the old
    /// section (appended when the page has none), and `results` with the `machine` and the
    /// `mode` of the run as `results.KEY` of `dir/benchmarks.json`.
    pub fn splice(
        &self,
        dir: &Path,
        markdown: &str,
        machine: &Machine,
        mode: &str,
        results: &impl Serialize,
    ) -> Result<()> {
        let entry = serde_json::json!({ "machine": machine, "mode": mode, "results": results });
        std::fs::create_dir_all(dir)?;
        let md_path = dir.join("BENCHMARKS.md");
        let page = std::fs::read_to_string(&md_path).unwrap_or_default();
        std::fs::write(&md_path, self.replace(&page, markdown))
            .with_context(|| format!("cannot write {}", md_path.display()))?;
        let json_path = dir.join("benchmarks.json");
        let mut json: serde_json::Value = match std::fs::read_to_string(&json_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", json_path.display()))?,
            Err(_) => serde_json::json!({}),
        };
        match json.pointer_mut("/results") {
            Some(existing) if existing.is_object() => existing[self.json_key] = entry,
            _ => json["results"] = serde_json::json!({ self.json_key: entry }),
        }
        std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", json_path.display()))?;
        println!(
            "==> wrote the {} step into {} and {}",
            self.json_key,
            md_path.display(),
            json_path.display()
        );
        Ok(())
    }

    /// `page` with its marked section replaced by `section` (appended when it has none).
    fn replace(&self, page: &str, section: &str) -> String {
        match (page.find(self.begin), page.find(self.end)) {
            (Some(begin), Some(end)) if begin < end => {
                let after = &page[end + self.end.len()..];
                format!(
                    "{}{section}{}",
                    &page[..begin],
                    after.strip_prefix('\n').unwrap_or(after)
                )
            }
            _ if page.is_empty() => section.to_owned(),
            _ => format!("{}\n\n{section}", page.trim_end()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Section = Section {
        begin: "<!-- b -->",
        end: "<!-- e -->",
        json_key: "step",
    };

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let old = "# B\n\n<!-- b -->\nold\n<!-- e -->\n## After\n";
        let new = "<!-- b -->\nnew\n<!-- e -->\n";
        assert_eq!(
            STEP.replace(old, new),
            "# B\n\n<!-- b -->\nnew\n<!-- e -->\n## After\n"
        );
        assert_eq!(STEP.replace("# B\n", new), format!("# B\n\n{new}"));
        assert_eq!(STEP.replace("", new), new);
    }

    #[test]
    fn the_json_entry_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("benchmarks.json"),
            r#"{"mode":"full","results":{"other":1,"step":{"old":true}}}"#,
        )
        .unwrap();
        let machine = super::super::super::machine::describe();
        let markdown = "<!-- b -->\nx\n<!-- e -->\n";
        let results = serde_json::json!({"new": 2});
        STEP.splice(dir.path(), markdown, &machine, "quick", &results)
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("benchmarks.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["results"]["other"], 1);
        assert_eq!(json["results"]["step"]["results"], results);
        assert_eq!(json["results"]["step"]["mode"], "quick");
        assert_eq!(json["mode"], "full");
    }
}
