//! Maintenance windows: outside its windows a group's agents are offered no update.
//!
//! An operator sets a group's windows (`cms-server group window`, `PUT
//! /api/v1/groups/{group}/window`; audited as `group.window`); the windows' text form and when
//! one is open are `cms_protocol::MaintenanceWindow`'s. The offer ([`super::offer`]) asks
//! [`offer_window`] before it picks a release, and sends the windows with the offer so the agent
//! checks them again on its own clock before it starts; the release watcher pushes only to
//! agents whose window is open. Windows read on the agent's clock use the UTC offset the agent
//! sent with its heartbeat or update check (an agent that sends none is read as UTC). This
//! module must never store a window that does not parse, and never offer outside a window.

use cms_protocol::{MAX_WINDOWS, MaintenanceWindow, UpdateWindows, WindowClock};

use super::group::checked;
use crate::access::{self, Actor};
use crate::clock;
use crate::db::{Db, DbError, StoredWindows};

/// The largest UTC offset a clock has (UTC+14:00, with room); an agent that says more is read
/// as UTC.
const MAX_UTC_OFFSET_MINUTES: i32 = 18 * 60;

/// Whether the release watcher may push to an agent of a group with `windows` now: windows on
/// the agent's clock are not known to be open (the watcher has no offset), so those agents hear
/// of the release in the answer to their next heartbeat instead.
pub fn may_push(windows: Option<&UpdateWindows>) -> bool {
    match windows {
        Some(w) if w.clock == WindowClock::Agent => false,
        windows => is_open(windows, None),
    }
}

/// The audit log's name of setting or clearing a group's windows.
pub const SET_WINDOW: &str = "group.window";

/// Why setting a group's windows was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// A group name, window or clock that breaks the rules; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// `--clear` for a group that has no windows.
    #[error("group {0} has no maintenance window")]
    NoWindow(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

fn is_server_failure(error: &WindowError) -> bool {
    matches!(error, WindowError::Database(_))
}

/// Sets `group`'s windows (replacing any it had) as `actor`; audited either way. Returns the
/// windows as stored (each in its normal form).
pub async fn set(
    db: &Db,
    actor: &Actor,
    group: &str,
    windows: &[String],
    clock: &str,
) -> Result<UpdateWindows, WindowError> {
    let target = format!("{group}: {} ({clock})", windows.join("; "));
    let result = set_unaudited(db, group, windows, clock).await;
    access::audit_result(db, actor, (SET_WINDOW, &target), &result, is_server_failure).await;
    if let Ok(stored) = &result {
        tracing::info!(actor = actor.name, group, windows = ?stored.windows, clock = stored.clock.name(), "group maintenance windows set");
    }
    result
}

/// Removes `group`'s windows as `actor` (its agents may then update at any time); audited.
pub async fn clear(db: &Db, actor: &Actor, group: &str) -> Result<(), WindowError> {
    let target = format!("{group}: cleared");
    let result = async {
        let group = checked(group).map_err(|e| WindowError::Invalid(e.to_string()))?;
        if db.clear_group_windows(group).await? {
            Ok(())
        } else {
            Err(WindowError::NoWindow(group.to_owned()))
        }
    }
    .await;
    access::audit_result(db, actor, (SET_WINDOW, &target), &result, is_server_failure).await;
    if result.is_ok() {
        tracing::info!(
            actor = actor.name,
            group,
            "group maintenance windows cleared"
        );
    }
    result
}

async fn set_unaudited(
    db: &Db,
    group: &str,
    windows: &[String],
    clock: &str,
) -> Result<UpdateWindows, WindowError> {
    let group = checked(group).map_err(|e| WindowError::Invalid(e.to_string()))?;
    let parsed = parse(windows, clock)?;
    let text = parsed.windows.join("\n");
    db.set_group_windows(group, &text, parsed.clock.name(), &clock::now())
        .await?;
    Ok(parsed)
}

/// The windows in their normal form, or why they cannot be stored.
fn parse(windows: &[String], clock: &str) -> Result<UpdateWindows, WindowError> {
    if windows.is_empty() || windows.len() > MAX_WINDOWS {
        return Err(WindowError::Invalid(format!(
            "give 1 to {MAX_WINDOWS} windows (or clear them), got {}",
            windows.len()
        )));
    }
    let clock: WindowClock = clock
        .parse()
        .map_err(|e: cms_protocol::WindowError| WindowError::Invalid(e.to_string()))?;
    let windows = windows
        .iter()
        .map(|text| {
            text.parse::<MaintenanceWindow>()
                .map(|w| w.to_string())
                .map_err(|e| WindowError::Invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(UpdateWindows { clock, windows })
}

/// The stored windows as the offer carries them (a window that no longer parses, written by a
/// newer server, never opens).
pub fn from_stored(stored: &StoredWindows) -> UpdateWindows {
    UpdateWindows {
        clock: stored.clock.parse().unwrap_or_default(),
        windows: stored.windows.lines().map(str::to_owned).collect(),
    }
}

/// Whether an update may be offered now to an agent whose group has `windows` (none: always),
/// reading agent-clock windows with the offset the agent gave (none: UTC).
pub fn is_open(windows: Option<&UpdateWindows>, utc_offset_minutes: Option<i32>) -> bool {
    windows.is_none_or(|w| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let offset = utc_offset_minutes.filter(|m| m.abs() <= MAX_UTC_OFFSET_MINUTES);
        w.is_open(now, offset.unwrap_or(0))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_stored_in_their_normal_form_or_refused() {
        let parsed = parse(&["mon-fri 22:00-05:00".into()], "Agent").unwrap();
        assert_eq!(parsed.clock, WindowClock::Agent);
        assert_eq!(parsed.windows, ["Mon,Tue,Wed,Thu,Fri 22:00-05:00"]);
        assert!(matches!(parse(&[], "utc"), Err(WindowError::Invalid(_))));
        let error = parse(&["Mon 9-17".into()], "utc").unwrap_err();
        assert!(error.to_string().contains("DAYS HH:MM-HH:MM"), "{error}");
        let error = parse(&["daily 01:00-02:00".into()], "local").unwrap_err();
        assert!(error.to_string().contains("utc or agent"), "{error}");
        let many = vec!["daily 01:00-02:00".to_owned(); MAX_WINDOWS + 1];
        assert!(parse(&many, "utc").is_err());
    }

    #[test]
    fn no_windows_is_always_open_and_a_whole_day_too() {
        assert!(is_open(None, None));
        let always = parse(&["daily 00:00-24:00".into()], "utc").unwrap();
        assert!(is_open(Some(&always), Some(-300)));
        let stored = StoredWindows {
            agent_group: "g".into(),
            windows: "daily 00:00-24:00\nMon 01:00-02:00".into(),
            clock: "agent".into(),
        };
        let read = from_stored(&stored);
        assert_eq!(read.clock, WindowClock::Agent);
        assert_eq!(read.windows.len(), 2);
    }
}
