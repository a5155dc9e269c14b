//! Wall-clock timestamps as the server stores them.
//!
//! Every timestamp the server writes is UTC RFC 3339 with exactly six fractional digits, so
//! stored values sort correctly as text on SQLite and PostgreSQL alike. This module must never
//! touch the database or depend on request data.

use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats a UTC instant as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (fixed width).
pub fn format_utc(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// The current time in the stored format.
pub fn now() -> String {
    format_utc(OffsetDateTime::now_utc())
}

/// The time `ahead` from now (or `-ahead` before it, when `ahead` is negative), stored format.
pub fn from_now(ahead: time::Duration) -> String {
    format_utc(OffsetDateTime::now_utc() + ahead)
}

/// How long before `now` an RFC 3339 timestamp lies (`None`: unparsable or in the future).
pub fn age(timestamp: &str, now: OffsetDateTime) -> Option<Duration> {
    let at = OffsetDateTime::parse(timestamp, &Rfc3339).ok()?;
    Duration::try_from(now - at).ok()
}

/// Whether an RFC 3339 timestamp lies within `window` before `now`; unparsable means no.
pub fn is_within(timestamp: &str, window: Duration, now: OffsetDateTime) -> bool {
    let Ok(at) = OffsetDateTime::parse(timestamp, &Rfc3339) else {
        return false;
    };
    let Ok(window) = time::Duration::try_from(window) else {
        return true;
    };
    at >= now - window
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn format_is_fixed_width_utc_and_parses_back() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let text = format_utc(at);
        assert_eq!(text, "2023-11-14T22:13:20.000000Z");
        assert_eq!(OffsetDateTime::parse(&text, &Rfc3339).unwrap(), at);
    }

    #[test]
    fn within_window() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let recent = format_utc(now - time::Duration::seconds(10));
        let old = format_utc(now - time::Duration::seconds(100));
        assert!(is_within(&recent, Duration::from_secs(90), now));
        assert!(!is_within(&old, Duration::from_secs(90), now));
        assert!(!is_within("garbage", Duration::from_secs(90), now));
    }
}
