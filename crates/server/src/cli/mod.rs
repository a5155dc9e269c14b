//! The `cms-server` command line: its clap types, and [`run`], which runs one command.
//!
//! One file per subcommand family: `serve`, `release` (`release publish|rollout`), `rollout`,
//! `token`, `tuf`, `agent` (`agent list|revoke|rotate|set-group`), `enroll` (`enroll
//! create|list|revoke`) and `group` (`group window|pin|unpin`); each holds its flags beside its logic,
//! which calls the library's domain
//! modules. Logs go to stderr; a command prints its result on stdout. Exit codes: 0 done,
//! 1 failure (I/O, database), 2 refused (bad arguments or settings, release already published,
//! token name taken or unknown). This is the one module of the library that reads the process
//! environment (the user name for the audit log); nothing else in the library may import it
//! (only `main.rs` does), and it must never hold server logic or print a secret other than the
//! token `token create` exists to hand out.

mod agent;
mod enroll;
mod group;
mod release;
mod rollout;
mod serve;
mod token;
mod tuf;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::access::Actor;
use crate::db::Db;

/// Reference backend for the CMS agent.
#[derive(Debug, Parser)]
#[command(name = "cms-server", version = cms_protocol::BUILD_VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent and operator HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Manage releases.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Manage operator tokens (stored hashed; a token is shown once, at creation).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Control a release's rollout: percentage, halt rule, pause, resume, status (audited).
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Manage the signing keys of the release metadata (TUF), with the root key offline.
    #[command(subcommand)]
    Tuf(tuf::TufCommand),
    /// List, revoke and rotate agent identities, move an agent to a group (audited).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Manage enrollment tokens (stored hashed; a token is shown once, at creation).
    #[command(subcommand)]
    Enroll(enroll::EnrollCommand),
    /// Manage groups: maintenance windows, pins and rollbacks by pin (audited).
    #[command(subcommand)]
    Group(group::GroupCommand),
}

/// The platform of the machine this server was built for.
const DEFAULT_PLATFORM: &str = if cfg!(windows) {
    "windows-x86_64"
} else {
    "linux-x86_64"
};

/// Exit code of a refused command (bad arguments, release already published), as clap uses.
const EXIT_REFUSED: u8 = 2;

/// Where a server keeps its data.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The server's data directory (SQLite, packages, signed metadata).
    #[arg(long, default_value = "./cms-server-data")]
    data_dir: PathBuf,
    /// `postgres://user:pass@host/db` when the server uses PostgreSQL (prefer
    /// --database-url-file or CMS_DATABASE_URL: a command line is visible to local users).
    #[arg(long, env = "CMS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the database URL (its first line), so the password never appears on a
    /// command line.
    #[arg(long, value_name = "PATH", conflicts_with = "database_url")]
    database_url_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The database URL from --database-url, CMS_DATABASE_URL or --database-url-file.
    fn database_url(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.database_url_file else {
            return Ok(self.database_url.clone().filter(|url| !url.is_empty()));
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --database-url-file {}", path.display()))?;
        let url = text.lines().next().unwrap_or_default().trim().to_owned();
        anyhow::ensure!(
            !url.is_empty(),
            "--database-url-file {} is empty",
            path.display()
        );
        Ok(Some(url))
    }
}

/// Runs the command `cli` names; `Ok` carries its exit code (0 done, 2 refused), `Err` a failure
/// (exit 1).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::serve(*args)),
        Command::Release(release::ReleaseCommand::Publish(args)) => {
            runtime.block_on(release::publish(args))
        }
        Command::Release(release::ReleaseCommand::Rollout(args)) => {
            runtime.block_on(release::rollout(args))
        }
        Command::Token(command) => runtime.block_on(token::token(command)),
        Command::Rollout(command) => runtime.block_on(rollout::rollout_control(command)),
        Command::Tuf(command) => runtime.block_on(tuf::tuf(command)),
        Command::Agent(command) => runtime.block_on(agent::agent(command)),
        Command::Enroll(command) => runtime.block_on(enroll::enroll(command)),
        Command::Group(command) => runtime.block_on(group::group_command(command)),
    }
}

/// Writes one line to stdout; a closed stdout must not turn a finished command into a failure.
fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Errors that tell a refused request (exit 2: retrying cannot help) from a failure (exit 1).
trait Refusal: std::error::Error + Send + Sync + 'static {
    fn is_refusal(&self) -> bool;
}

/// 0 when done; 2 with the message for a refusal; the error itself (exit 1) otherwise.
fn exit_code<E: Refusal>(result: Result<(), E>, context: &'static str) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is_refusal() => {
            tracing::error!("{error}");
            eprintln!("cms-server: {error}");
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        Err(error) => Err(error).context(context),
    }
}

/// Who runs this command, for the audit log (the OS user name when known).
fn command_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_default();
    let user: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(32)
        .collect();
    Actor::command_line(&user)
}

async fn open_store(store: &StoreArgs) -> anyhow::Result<Db> {
    let url = store.database_url()?;
    Db::open_for_command(&store.data_dir, url.as_deref())
        .await
        .context("cannot open the server's database")
}
