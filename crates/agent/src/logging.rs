//! Local logs: size-rotated files under `logs/` plus stderr.
//!
//! File writes go through a background thread (`tracing_appender::non_blocking`), so a slow
//! disk never stalls the agent: lines wait in a queue of [`QUEUED_LINES`], and a burst beyond
//! that while the disk stalls is dropped rather than blocking. The returned guard flushes on
//! drop and must outlive the last log line. Secrets never reach this module: callers log ids, never tokens or secrets.

use std::io;
use std::path::Path;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Size at which `agent.log` is rotated.
const MAX_LOG_BYTES: usize = 5 * 1024 * 1024;
/// Rotated files kept (`agent.log.1` .. `agent.log.5`).
const KEPT_LOG_FILES: usize = 5;
/// Lines the file writer's queue holds. The queue is allocated whole at start, so the
/// library's default (128,000 lines, 4 MB) would be half of an idle agent's memory.
const QUEUED_LINES: usize = 1024;
/// Environment variable with a `tracing` filter, such as `debug` or `cms_agent=trace`.
pub const LOG_FILTER_ENV: &str = "CMS_AGENT_LOG";

/// Keeps the file writer alive; dropping it flushes what is queued.
#[derive(Debug)]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Sends `tracing` events to `logs_dir/file_name` (rotated by size) and to stderr.
pub fn init(logs_dir: &Path, file_name: &str) -> io::Result<LogGuard> {
    std::fs::create_dir_all(logs_dir)?;
    let rotating = FileRotate::new(
        logs_dir.join(file_name),
        AppendCount::new(KEPT_LOG_FILES),
        ContentLimit::BytesSurpassed(MAX_LOG_BYTES),
        Compression::None,
        None,
    );
    let (file_writer, worker) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .finish(rotating);
    let filter = EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(file_writer);
    let stderr_layer = tracing_subscriber::fmt::layer().with_writer(io::stderr);
    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .map_err(io::Error::other)?;
    Ok(LogGuard { _worker: worker })
}
