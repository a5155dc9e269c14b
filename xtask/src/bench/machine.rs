//! The machine a run measured, and the tools it used: printed with every result, because a
//! number without its machine means nothing.

use std::process::Command;

use serde::Serialize;

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical CPUs this process may use.
    pub cores: usize,
    /// Total memory, MiB.
    pub ram_mib: u64,
    /// Operating system (`/etc/os-release`).
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// Load average when the run started (other work shares the machine).
    pub load_average: String,
}

/// Describes this machine now.
pub fn describe() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    Machine {
        cpu: field(&cpuinfo, "model name", ':').unwrap_or_else(|| "unknown".into()),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        ram_mib: field(&meminfo, "MemTotal", ':')
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024),
        os: field(&read("/etc/os-release"), "PRETTY_NAME", '=')
            .map_or_else(|| "unknown".into(), |v| v.trim_matches('"').to_owned()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        load_average: load_average(),
    }
}

/// The load average now, over 1, 5 and 15 minutes (`/proc/loadavg`).
pub fn load_average() -> String {
    let text = read("/proc/loadavg");
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    match fields.as_slice() {
        [one, five, fifteen] => format!("{one} / {five} / {fifteen}"),
        _ => "unknown".into(),
    }
}

/// First line of `program args` (its version), or why there is none.
pub fn tool_version(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Ok(out) => format!("{program} failed with {}", out.status),
        Err(err) => format!("not available ({err})"),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of the first `key<sep>value` line.
fn field(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(sep)?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_key() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2GHz\n";
        assert_eq!(
            field(text, "model name", ':').as_deref(),
            Some("Some CPU @ 2GHz")
        );
        assert_eq!(
            field("NAME=\"Debian\"\n", "NAME", '=').as_deref(),
            Some("\"Debian\"")
        );
        assert_eq!(field(text, "flags", ':'), None);
    }

    #[test]
    fn this_machine_is_described() {
        let machine = describe();
        assert!(machine.cores >= 1);
        assert!(machine.ram_mib > 0);
        assert!(!machine.kernel.is_empty());
        assert_eq!(machine.load_average.matches(" / ").count(), 2);
    }
}
