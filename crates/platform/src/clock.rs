//! Wall-clock timestamps in the one format the agent writes everywhere: RFC 3339, UTC.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as RFC 3339 in UTC (`2026-11-25T10:00:00.123456789Z`).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::now_utc().unix_timestamp().to_string())
}

/// Now, as seconds since the Unix epoch.
pub fn now_unix_seconds() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// How many minutes the machine's local time is ahead of UTC now (its time zone's offset,
/// daylight saving included; `TZ` where the OS honours it). `None` when the time zone cannot
/// be read: the caller then treats local time as UTC and says so.
pub fn local_utc_offset_minutes() -> Option<i32> {
    let zone = jiff::tz::TimeZone::try_system().ok()?;
    let offset = zone.to_offset(jiff::Timestamp::now());
    Some(offset.seconds() / 60)
}

/// Now, as a compact UTC stamp safe in file names (`20261125T100000Z`).
pub fn now_file_stamp() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
