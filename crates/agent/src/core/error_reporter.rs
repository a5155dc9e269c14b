//! Error reporting that survives an outage.
//!
//! `report` posts a report at once; when the backend cannot take it, the report is appended to
//! `error_reports.jsonl`. The buffer is bounded: past the bound, newer reports are dropped and
//! counted (the count is kept in `error_reports.dropped` and sent as its own report), so the
//! first errors of an outage, usually the cause, survive. `flush` re-sends the buffer oldest
//! first, one flush at a time, and removes only the reports the backend took. Each report has a
//! unique `report_id`, so a re-send after a lost answer is stored once.
//!
//! A damaged buffer loses only its damaged lines (invalid UTF-8, a torn line), which are
//! counted with the drops; a report that cannot be appended (a full disk) is counted too, and
//! its partial line is cut off again. [`install_panic_hook`] makes a panic leave a report in
//! the buffer, delivered after the restart that follows.
//! Update progress events travel the same way ([`ErrorReporter::store_progress`]).
//! When the server throttles the agent (429), reports go to the buffer without trying, and no
//! flush is attempted, until its `Retry-After` has passed; the throttled batch stays buffered.
//! This module must never block the agent for long or panic on a damaged buffer file.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use cms_protocol::{BUILD_VERSION, ErrorReport, Transfer, UPDATE_PROGRESS_KIND, UpdateProgress};
use serde_json::Value;
use std::time::Instant;

use crate::net::http_client::{HttpClient, HttpError};
use cms_platform::clock;
use cms_platform::fs::{open_no_follow, read_no_follow, read_to_string_no_follow, write_atomic};

/// Reports sent per request when the buffer is flushed.
const FLUSH_BATCH: usize = 200;
/// Longest message kept; longer ones are cut (a report is a pointer, not a log dump).
const MAX_MESSAGE_BYTES: usize = 4096;
/// Kind of the report that says how many reports were dropped.
pub const OVERFLOW_KIND: &str = "error_buffer_overflow";
/// Kind of the report a panic leaves.
pub const PANIC_KIND: &str = "agent_panic";

/// Sends error reports to the backend, buffering them on disk while it is unreachable.
#[derive(Debug)]
pub struct ErrorReporter {
    /// `error_reports.jsonl`, for the panic hook when the buffer is locked.
    path: PathBuf,
    buffer: Mutex<ErrorBuffer>,
    /// Held for a whole flush: two flushes at once would each remove the other's reports.
    flushing: tokio::sync::Mutex<()>,
    /// No delivery is tried before this instant (the server's last `Retry-After`).
    hold_until: Mutex<Option<Instant>>,
}

impl ErrorReporter {
    /// Opens (or starts) the buffer at `path`, keeping at most `max_reports` reports.
    pub fn open(path: PathBuf, max_reports: usize) -> Self {
        ErrorReporter {
            buffer: Mutex::new(ErrorBuffer::open(path.clone(), max_reports.max(1))),
            path,
            flushing: tokio::sync::Mutex::new(()),
            hold_until: Mutex::new(None),
        }
    }

    /// Logs the problem and delivers it to the backend now, or buffers it for later.
    pub async fn report(&self, http: &HttpClient, kind: &str, message: &str, details: Value) {
        tracing::error!(kind, "{message}");
        let report = new_report(kind, message, details);
        if self.buffered() == 0 && !self.held() {
            match self.deliver(http, std::slice::from_ref(&report)).await {
                Ok(_) => return,
                Err(err) => tracing::debug!(error = %err, "error report buffered"),
            }
        }
        self.buffer().push(report);
    }

    /// Posts `reports`; a 429 holds every delivery back for its `Retry-After`.
    async fn deliver(
        &self,
        http: &HttpClient,
        reports: &[ErrorReport],
    ) -> Result<cms_protocol::ErrorBatchResponse, HttpError> {
        let result = http.report_errors(reports).await;
        if let Err(HttpError::RateLimited { retry_after, .. }) = &result {
            tracing::warn!(
                retry_after_secs = retry_after.as_secs(),
                reports = reports.len(),
                "the server throttles error reports; they stay buffered until then"
            );
            *self.hold() = Some(Instant::now() + *retry_after);
        }
        result
    }

    /// Whether deliveries are held back by a recent 429.
    fn held(&self) -> bool {
        let mut hold = self.hold();
        match *hold {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *hold = None;
                false
            }
            None => false,
        }
    }

    fn hold(&self) -> MutexGuard<'_, Option<Instant>> {
        self.hold_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Buffers a report without trying the network: for problems found before the agent can
    /// talk to its backend (the next flush delivers it).
    pub fn store(&self, kind: &str, message: &str) {
        self.buffer().push(new_report(kind, message, Value::Null));
    }

    /// Buffers a report from a panic hook: never waits for the buffer's lock (the panicking
    /// code may hold it), appending straight to the file instead.
    fn store_from_panic(&self, kind: &str, message: &str) {
        let report = new_report(kind, message, Value::Null);
        match self.buffer.try_lock() {
            Ok(mut buffer) => buffer.push(report),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().push(report),
            Err(TryLockError::WouldBlock) => {
                let _ = append_line(&self.path, &report);
            }
        }
    }

    /// Buffers an update progress event (a report of kind `update_progress`, see
    /// `cms_protocol::UpdateProgress`); the next [`ErrorReporter::flush`] delivers it, so it
    /// survives an outage like an error report. A failure's or rollback's `reason` ends its
    /// message, which the server keeps as the step's detail for the operator.
    pub fn store_progress(&self, progress: &UpdateProgress, reason: Option<&str>) {
        let mut message = match &progress.failed_step {
            Some(failed) => format!("update to {}: failed while {failed}", progress.version),
            None => format!("update to {}: {}", progress.version, progress.step.name()),
        };
        if let Some(transfer) = progress.transfer {
            let kind = match transfer {
                Transfer::Delta => "delta",
                Transfer::Full => "full",
            };
            let bytes = progress.transfer_bytes.unwrap_or_default();
            message.push_str(&format!(" (transfer: {kind}, {bytes} bytes)"));
        }
        if let Some(reason) = reason {
            message.push_str(": ");
            message.push_str(reason);
        }
        tracing::info!(version = %progress.version, step = progress.step.name(), transfer = ?progress.transfer, transfer_bytes = progress.transfer_bytes, "update progress");
        let details = serde_json::to_value(progress).unwrap_or(Value::Null);
        self.buffer()
            .push(new_report(UPDATE_PROGRESS_KIND, &message, details));
    }

    /// Re-sends buffered reports, oldest first; stops at the first failure and keeps the rest.
    pub async fn flush(&self, http: &HttpClient) {
        self.persist_drop_count();
        if self.held() {
            tracing::debug!("error reports held back by the server's Retry-After");
            return;
        }
        let _one_at_a_time = self.flushing.lock().await;
        loop {
            let batch = self.buffer().oldest(FLUSH_BATCH);
            if batch.is_empty() {
                break;
            }
            match self.deliver(http, &batch).await {
                Ok(answer) => {
                    let left = self.buffer().remove_delivered(&batch);
                    tracing::info!(
                        sent = batch.len(),
                        stored = answer.stored,
                        duplicates = answer.duplicates,
                        left,
                        "buffered error reports delivered"
                    );
                }
                Err(err) => {
                    tracing::debug!(error = %err, "buffered error reports kept for a later attempt");
                    return;
                }
            }
        }
        self.flush_drop_count(http).await;
    }

    /// Writes the count of dropped reports if an earlier write failed (a full disk), so it
    /// survives the process; the agent calls it when it stops.
    pub fn persist_drop_count(&self) {
        self.buffer().save_count_if_unsaved();
    }

    /// Whether a flush has anything to deliver: buffered reports, or a count of dropped ones.
    pub fn has_undelivered(&self) -> bool {
        let buffer = self.buffer();
        !buffer.reports.is_empty() || buffer.dropped > 0
    }

    /// Reports waiting in the buffer (heartbeats carry this number).
    pub fn buffered(&self) -> u64 {
        self.buffer().reports.len() as u64
    }

    fn buffer(&self) -> MutexGuard<'_, ErrorBuffer> {
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn flush_drop_count(&self, http: &HttpClient) {
        let (dropped, max) = {
            let buffer = self.buffer();
            (buffer.dropped, buffer.max_reports)
        };
        if dropped == 0 {
            return;
        }
        let message = format!(
            "{dropped} error reports were dropped while the backend was unreachable (the buffer keeps {max}; a full disk or damaged lines in the buffer file also count)"
        );
        let report = new_report(
            OVERFLOW_KIND,
            &message,
            serde_json::json!({ "dropped": dropped }),
        );
        if self.deliver(http, &[report]).await.is_ok() {
            self.buffer().subtract_dropped(dropped);
        }
    }
}

/// Logs every panic and leaves a report of it in the buffer (never the network: the process
/// may be about to end), so the next flush delivers it, after the restart at the latest. The
/// release profile may abort on panic: the hook runs before the abort, so this holds there too.
pub fn install_panic_hook(reporter: Arc<ErrorReporter>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_message(info);
        tracing::error!(kind = PANIC_KIND, "{message}");
        reporter.store_from_panic(PANIC_KIND, &message);
        previous(info);
    }));
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload_as_str().unwrap_or("(no message)");
    let thread = std::thread::current();
    let place = info
        .location()
        .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
    format!(
        "the agent panicked in thread {}{place}: {payload}",
        thread.name().unwrap_or("unnamed")
    )
}

fn new_report(kind: &str, message: &str, details: Value) -> ErrorReport {
    let mut message = message.to_owned();
    message.truncate(message.floor_char_boundary(MAX_MESSAGE_BYTES));
    ErrorReport {
        report_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.to_owned(),
        message,
        agent_version: BUILD_VERSION.to_owned(),
        created_at: clock::now_rfc3339(),
        details,
    }
}

/// `error_reports.jsonl` and its drop counter, mirrored in memory.
#[derive(Debug)]
struct ErrorBuffer {
    path: PathBuf,
    dropped_path: PathBuf,
    reports: Vec<ErrorReport>,
    max_reports: usize,
    dropped: u64,
    /// Whether `dropped_path` holds `dropped`: false after a write failed (a full disk), so
    /// the count is written as soon as a write succeeds again and survives a restart.
    count_saved: bool,
}

impl ErrorBuffer {
    fn open(path: PathBuf, max_reports: usize) -> Self {
        let dropped_path = path.with_extension("dropped");
        let (mut reports, unreadable) = read_reports(&path);
        let mut dropped = read_count(&dropped_path) + unreadable;
        if reports.len() > max_reports {
            dropped += (reports.len() - max_reports) as u64;
            reports.truncate(max_reports);
        }
        let mut buffer = ErrorBuffer {
            path,
            dropped_path,
            reports,
            max_reports,
            dropped,
            count_saved: true,
        };
        if unreadable > 0 {
            tracing::warn!(unreadable, "skipped damaged lines in the error buffer");
            buffer.rewrite();
            buffer.save_count();
        }
        buffer
    }

    fn push(&mut self, report: ErrorReport) {
        if self.reports.len() >= self.max_reports {
            self.dropped += 1;
            self.save_count();
            tracing::warn!(dropped = self.dropped, "error buffer full; report dropped");
            return;
        }
        match append_line(&self.path, &report) {
            Ok(()) => {
                self.reports.push(report);
                // A write went through, so space is back: the count can be kept now.
                self.save_count_if_unsaved();
            }
            Err(err) => {
                self.dropped += 1;
                self.save_count();
                tracing::warn!(error = %err, path = %self.path.display(), dropped = self.dropped, "cannot buffer error report; dropped");
            }
        }
    }

    fn oldest(&self, n: usize) -> Vec<ErrorReport> {
        self.reports.iter().take(n).cloned().collect()
    }

    /// Drops the reports the backend just took (by id: reports stored meanwhile stay);
    /// returns how many are left.
    fn remove_delivered(&mut self, delivered: &[ErrorReport]) -> usize {
        let ids: HashSet<&str> = delivered.iter().map(|r| r.report_id.as_str()).collect();
        self.reports.retain(|r| !ids.contains(r.report_id.as_str()));
        self.rewrite();
        self.reports.len()
    }

    fn subtract_dropped(&mut self, delivered: u64) {
        self.dropped = self.dropped.saturating_sub(delivered);
        self.save_count();
    }

    fn rewrite(&self) {
        let result = if self.reports.is_empty() {
            remove_if_present(&self.path)
        } else {
            write_atomic(&self.path, &encode_lines(&self.reports))
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, path = %self.path.display(), "cannot rewrite the error buffer");
        }
    }

    fn save_count(&mut self) {
        let result = if self.dropped == 0 {
            remove_if_present(&self.dropped_path)
        } else {
            write_atomic(&self.dropped_path, self.dropped.to_string().as_bytes())
        };
        self.count_saved = result.is_ok();
        if let Err(err) = result {
            tracing::warn!(error = %err, dropped = self.dropped, "cannot record the dropped-report count yet; kept in memory");
        }
    }

    fn save_count_if_unsaved(&mut self) {
        if !self.count_saved {
            self.save_count();
            if self.count_saved {
                tracing::info!(dropped = self.dropped, "dropped-report count recorded");
            }
        }
    }
}

/// The readable reports of the file, and how many lines were damaged (invalid UTF-8, torn,
/// not a report): each line on its own, so one bad byte costs one report, not the buffer.
fn read_reports(path: &Path) -> (Vec<ErrorReport>, u64) {
    let bytes = match read_no_follow(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return (Vec::new(), 0),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the error buffer");
            return (Vec::new(), 0);
        }
    };
    let mut unreadable = 0;
    let reports = bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .filter_map(|line| {
            let parsed = serde_json::from_slice(line).ok();
            unreadable += u64::from(parsed.is_none());
            parsed
        })
        .collect();
    (reports, unreadable)
}

fn read_count(path: &Path) -> u64 {
    read_to_string_no_follow(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn encode_lines(reports: &[ErrorReport]) -> Vec<u8> {
    let mut out = Vec::new();
    for report in reports {
        if serde_json::to_writer(&mut out, report).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// Appends one line; when the write fails part way (a full disk), the file is cut back to
/// where it was, so no torn line is left for the next read.
fn append_line(path: &Path, report: &ErrorReport) -> io::Result<()> {
    let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
    line.push(b'\n');
    // Not `append(true)`: an append-only handle cannot be cut back on Windows.
    let mut file = open_no_follow(
        path,
        OpenOptions::new().create(true).write(true).truncate(false),
    )?;
    let end = file.seek(SeekFrom::End(0))?;
    let written = file.write_all(&line).and_then(|()| file.sync_data());
    if written.is_err() {
        let _ = file.set_len(end);
    }
    written
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: usize) -> ErrorReport {
        new_report("test", &format!("report {n}"), Value::Null)
    }

    #[test]
    fn buffer_is_bounded_keeps_the_oldest_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_reports.jsonl");
        let mut buffer = ErrorBuffer::open(path.clone(), 3);
        for n in 0..10 {
            buffer.push(report(n));
        }
        assert_eq!(buffer.reports.len(), 3);
        assert_eq!(buffer.dropped, 7);
        let reopened = ErrorBuffer::open(path, 3);
        assert_eq!(reopened.reports.len(), 3);
        assert_eq!(reopened.reports[0].message, "report 0");
        assert_eq!(reopened.dropped, 7);
    }

    #[test]
    fn a_count_that_could_not_be_written_is_written_once_a_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_reports.jsonl");
        let mut buffer = ErrorBuffer::open(path.clone(), 1);
        buffer.push(report(0));
        // The count file cannot be written: a non-empty folder stands where it goes.
        let obstacle = path.with_extension("dropped");
        fs::create_dir_all(obstacle.join("in-the-way")).unwrap();
        buffer.push(report(1));
        assert_eq!(buffer.dropped, 1);
        assert!(!buffer.count_saved);

        fs::remove_dir_all(&obstacle).unwrap();
        let delivered = buffer.oldest(1);
        buffer.remove_delivered(&delivered);
        buffer.push(report(2));
        assert!(buffer.count_saved);
        assert_eq!(ErrorBuffer::open(path, 1).dropped, 1, "the count was lost");
    }

    #[test]
    fn removing_delivered_reports_rewrites_and_finally_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_reports.jsonl");
        let mut buffer = ErrorBuffer::open(path.clone(), 10);
        for n in 0..4 {
            buffer.push(report(n));
        }
        let first_three = buffer.oldest(3);
        buffer.push(report(4));
        assert_eq!(buffer.remove_delivered(&first_three), 2);
        assert_eq!(read_reports(&path).0[0].message, "report 3");
        let rest = buffer.oldest(10);
        assert_eq!(buffer.remove_delivered(&rest), 0);
        assert!(!path.exists());
    }

    #[test]
    fn damaged_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_reports.jsonl");
        let good = serde_json::to_string(&report(1)).unwrap();
        fs::write(&path, format!("{good}\n{{truncated\n")).unwrap();
        let buffer = ErrorBuffer::open(path.clone(), 10);
        assert_eq!(buffer.reports.len(), 1);
        assert_eq!(buffer.dropped, 1);
        assert_eq!(read_reports(&path), (vec![buffer.reports[0].clone()], 0));
    }

    #[test]
    fn invalid_utf8_and_a_torn_last_line_cost_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_reports.jsonl");
        let good = |n| serde_json::to_vec(&report(n)).unwrap();
        let mut bytes = good(1);
        bytes.extend_from_slice(b"\n{\"report_id\":\"\xff\xfe\"}\n");
        bytes.extend_from_slice(&good(2));
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(&good(3)[..20]);
        fs::write(&path, bytes).unwrap();
        let buffer = ErrorBuffer::open(path.clone(), 10);
        let messages: Vec<_> = buffer.reports.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["report 1", "report 2"]);
        assert_eq!(buffer.dropped, 2);
        assert_eq!(read_reports(&path), (buffer.reports.clone(), 0));
        assert_eq!(read_count(&path.with_extension("dropped")), 2);
    }

    #[test]
    fn a_report_that_cannot_be_written_is_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error_reports.jsonl");
        fs::create_dir(&path).unwrap(); // nothing can be appended to a folder
        let mut buffer = ErrorBuffer::open(path.clone(), 10);
        buffer.push(report(1));
        assert!(buffer.reports.is_empty());
        assert_eq!(buffer.dropped, 1);
        assert_eq!(read_count(&path.with_extension("dropped")), 1);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let report = new_report("k", &long, Value::Null);
        assert!(report.message.len() <= MAX_MESSAGE_BYTES);
    }
}
