//! The PostgreSQL the replica step runs on: its URL (`CMS_BENCH_POSTGRES_URL`, else what
//! `.ci/postgres.sh` prints), and a fresh schema per run that is dropped afterwards, so runs
//! never see each other's agents.
//!
//! Must never: print the database password (URLs are shown with it hidden), or touch any
//! schema but the one it created.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::util;

/// Environment variable naming the database the replica step uses.
pub const URL_VAR: &str = "CMS_BENCH_POSTGRES_URL";

/// The database URL to use, or why there is none.
pub fn find_url() -> Result<String, String> {
    if let Ok(url) = std::env::var(URL_VAR)
        && !url.trim().is_empty()
    {
        return Ok(url.trim().to_owned());
    }
    let script = util::project_root().join(".ci").join("postgres.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !url.starts_with("postgres") {
        return Err(format!(
            "{URL_VAR} is not set and {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(url)
}

/// `psql`, which creates and drops the schema; `Err` says why it cannot be used.
pub fn require_psql() -> Result<(), String> {
    match Command::new("psql").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("psql is not installed (apt-get install postgresql-client)".into()),
    }
}

/// A schema of its own in the database at `admin_url`; dropped by [`Schema::drop_schema`].
#[derive(Debug)]
pub struct Schema {
    admin_url: String,
    name: String,
}

impl Schema {
    /// Creates `bench_<unique>`.
    pub fn create(admin_url: &str) -> Result<Schema> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let schema = Schema {
            admin_url: admin_url.to_owned(),
            name: format!("bench_{}_{nanos}", std::process::id()),
        };
        schema.sql(&format!("CREATE SCHEMA {}", schema.name))?;
        Ok(schema)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL the servers use: the admin URL with `search_path` set to this schema.
    pub fn server_url(&self) -> String {
        let sep = if self.admin_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.admin_url, self.name
        )
    }

    /// The server's version (`SHOW server_version`).
    pub fn server_version(&self) -> Result<String> {
        Ok(self.sql("SHOW server_version")?.trim().to_owned())
    }

    /// Drops it and everything in it.
    pub fn drop_schema(self) -> Result<()> {
        self.sql(&format!("DROP SCHEMA {} CASCADE", self.name))
            .map(drop)
    }

    fn sql(&self, statement: &str) -> Result<String> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&self.admin_url)
            .arg("-c")
            .arg(statement);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {}", util::describe(&cmd)))?;
        if !out.status.success() {
            bail!(
                "psql {statement:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
