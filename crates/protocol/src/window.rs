//! Maintenance windows: when a group's agents may start an update (`cms-server group window`).
//!
//! A window is written `DAYS HH:MM-HH:MM`: `DAYS` is a day (`Mon`), a range (`Mon-Fri`, which
//! may wrap: `Fri-Mon`), a comma list of those (`Mon,Wed,Sat-Sun`) or `daily`; the times are a
//! start and an end on a 24-hour clock, `24:00` allowed as an end. An end at or before the start
//! spans midnight: `Mon-Fri 22:00-05:00` opens Monday 22:00 and closes Tuesday 05:00, and the
//! Friday window closes Saturday 05:00. The server checks a group's windows before it offers an
//! update and sends them with the offer; the agent checks them again against its own clock
//! before it starts. Pure: this module must never do I/O or read a clock.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Minutes in a day.
const DAY_MINUTES: u16 = 24 * 60;

/// Day names, Monday first (the index is the day number used here).
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Windows a group may have at most.
pub const MAX_WINDOWS: usize = 16;

/// Which clock a group's windows are read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WindowClock {
    /// Coordinated Universal Time, the same instant for every agent.
    #[default]
    Utc,
    /// Each agent's own local time (its UTC offset, which it reports).
    Agent,
}

impl WindowClock {
    /// The name used on the command line, the API and the database.
    pub fn name(self) -> &'static str {
        match self {
            Self::Utc => "utc",
            Self::Agent => "agent",
        }
    }
}

impl FromStr for WindowClock {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "utc" => Ok(Self::Utc),
            "agent" => Ok(Self::Agent),
            _ => Err(WindowError(format!(
                "{text:?} is not a window clock: use utc or agent"
            ))),
        }
    }
}

/// Why a window's text was refused: the message says what one looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowError(String);

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WindowError {}

/// One window: the days it opens on and its start and end, in minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Bit `d` set: the window opens on day `d` (0 = Monday).
    days: u8,
    start: u16,
    end: u16,
}

impl MaintenanceWindow {
    /// Whether the window is open at `minute` (after midnight) of day `weekday` (0 = Monday).
    pub fn is_open_at(&self, weekday: u8, minute: u16) -> bool {
        let opens_on = |day: u8| self.days & (1 << (day % 7)) != 0;
        if self.start < self.end {
            return opens_on(weekday) && (self.start..self.end).contains(&minute);
        }
        // Spans midnight: the evening part on an opening day, the morning part the day after.
        (opens_on(weekday) && minute >= self.start) || (opens_on(weekday + 6) && minute < self.end)
    }
}

impl FromStr for MaintenanceWindow {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || {
            WindowError(format!(
                "{text:?} is not a maintenance window: write DAYS HH:MM-HH:MM, \
                 e.g. \"Mon-Fri 22:00-05:00\" or \"daily 01:00-03:00\""
            ))
        };
        let (days, times) = text.trim().split_once(' ').ok_or_else(shape)?;
        let (start, end) = times.trim().split_once('-').ok_or_else(shape)?;
        let days = parse_days(days).ok_or_else(shape)?;
        let start = parse_minute(start).filter(|m| *m < DAY_MINUTES);
        let (start, end) = start.zip(parse_minute(end)).ok_or_else(shape)?;
        if start == end {
            return Err(WindowError(format!(
                "{text:?} opens and closes at the same minute; use 00:00-24:00 for a whole day"
            )));
        }
        Ok(Self { days, start, end })
    }
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7u8)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAY_NAMES[usize::from(d)])
            .collect();
        let days = if days.len() == 7 {
            "daily".to_owned()
        } else {
            days.join(",")
        };
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{days} {}-{}", hm(self.start), hm(self.end))
    }
}

/// `daily`, or a comma list of days and day ranges; the bit set of the days.
fn parse_days(text: &str) -> Option<u8> {
    if text.eq_ignore_ascii_case("daily") {
        return Some(0x7f);
    }
    text.split(',').try_fold(0u8, |set, part| {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (day_number(first)?, day_number(last)?),
            None => (day_number(part)?, day_number(part)?),
        };
        let span = (last + 7 - first) % 7;
        Some((0..=span).fold(set, |set, i| set | 1 << ((first + i) % 7)))
    })
}

fn day_number(name: &str) -> Option<u8> {
    let index = DAY_NAMES
        .iter()
        .position(|day| day.eq_ignore_ascii_case(name.trim()))?;
    u8::try_from(index).ok()
}

/// `HH:MM` as minutes after midnight, `24:00` included.
fn parse_minute(text: &str) -> Option<u16> {
    let (hours, minutes) = text.trim().split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
    let total = hours * 60 + minutes;
    (hours <= 24 && minutes < 60 && total <= DAY_MINUTES).then_some(total)
}

/// A group's windows as the server sends them with an offer, so the agent checks them again
/// before it starts (absent: the group has none and updates may start at any time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateWindows {
    /// The clock they are read on.
    pub clock: WindowClock,
    /// The windows, each in the text form the module docs describe.
    pub windows: Vec<String>,
}

impl UpdateWindows {
    /// Whether any window is open at `unix_seconds`, read on a clock `utc_offset_minutes` ahead of
    /// UTC (the agent's own offset for [`WindowClock::Agent`], 0 for UTC). A window that does not
    /// parse never opens, so a garbled offer waits rather than starts.
    pub fn is_open(&self, unix_seconds: i64, utc_offset_minutes: i32) -> bool {
        let offset = match self.clock {
            WindowClock::Utc => 0,
            WindowClock::Agent => i64::from(utc_offset_minutes),
        };
        let (weekday, minute) = weekday_and_minute(unix_seconds + offset * 60);
        self.windows
            .iter()
            .filter_map(|text| text.parse::<MaintenanceWindow>().ok())
            .any(|window| window.is_open_at(weekday, minute))
    }
}

/// Day of the week (0 = Monday) and minute of the day of a Unix time.
fn weekday_and_minute(unix_seconds: i64) -> (u8, u16) {
    let minutes = unix_seconds.div_euclid(60);
    let days = minutes.div_euclid(i64::from(DAY_MINUTES));
    let minute = minutes.rem_euclid(i64::from(DAY_MINUTES));
    // 1970-01-01 was a Thursday (day 3).
    let weekday = (days + 3).rem_euclid(7);
    (
        u8::try_from(weekday).unwrap_or_default(),
        u16::try_from(minute).unwrap_or_default(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn w(text: &str) -> MaintenanceWindow {
        text.parse().unwrap()
    }

    /// Monday 2026-12-07 00:00 UTC.
    const MONDAY: i64 = 1_796_601_600;

    #[test]
    fn the_epoch_and_a_known_monday() {
        assert_eq!(weekday_and_minute(0), (3, 0));
        assert_eq!(weekday_and_minute(MONDAY), (0, 0));
        assert_eq!(
            weekday_and_minute(MONDAY + 6 * 86_400 + 23 * 3600),
            (6, 23 * 60)
        );
        assert_eq!(weekday_and_minute(MONDAY - 60), (6, DAY_MINUTES - 1));
    }

    #[test]
    fn windows_parse_and_print_back() {
        assert_eq!(
            w("Mon-Fri 22:00-05:00").to_string(),
            "Mon,Tue,Wed,Thu,Fri 22:00-05:00"
        );
        assert_eq!(w("daily 00:00-24:00").to_string(), "daily 00:00-24:00");
        assert_eq!(w("sat-sun 01:30-03:00").to_string(), "Sat,Sun 01:30-03:00");
        assert_eq!(
            w("Fri-Mon 10:00-11:00").to_string(),
            "Mon,Fri,Sat,Sun 10:00-11:00"
        );
        assert_eq!(w("Mon,Wed 10:00-11:00").to_string(), "Mon,Wed 10:00-11:00");
        for bad in [
            "",
            "Mon",
            "Mon 22:00",
            "Funday 01:00-02:00",
            "Mon 25:00-02:00",
            "Mon 24:00-02:00",
            "Mon 1:00-2:00",
            "Mon 10:60-11:00",
            "Mon 10:00-10:00",
            "Mon-Fri 22:00-05:00 extra",
        ] {
            let error = bad.parse::<MaintenanceWindow>().unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn a_window_within_a_day() {
        let window = w("Mon-Fri 09:00-17:00");
        assert!(window.is_open_at(0, 9 * 60));
        assert!(window.is_open_at(4, 17 * 60 - 1));
        assert!(!window.is_open_at(4, 17 * 60));
        assert!(!window.is_open_at(5, 12 * 60));
    }

    #[test]
    fn a_window_spanning_midnight_belongs_to_its_opening_day() {
        let window = w("Mon-Fri 22:00-05:00");
        assert!(window.is_open_at(0, 22 * 60));
        assert!(window.is_open_at(1, 4 * 60 + 59)); // Tuesday morning, from Monday
        assert!(window.is_open_at(5, 60)); // Saturday morning, from Friday
        assert!(!window.is_open_at(0, 60)); // Monday morning: Sunday opened nothing
        assert!(!window.is_open_at(5, 22 * 60)); // Saturday evening
        assert!(!window.is_open_at(2, 12 * 60));
        let sunday = w("Sun 23:00-01:00");
        assert!(sunday.is_open_at(0, 30)); // wraps to Monday
    }

    #[test]
    fn the_clock_decides_which_minute_it_is() {
        let windows = UpdateWindows {
            clock: WindowClock::Agent,
            windows: vec!["Mon 10:00-11:00".into()],
        };
        let monday_0830_utc = MONDAY + 8 * 3600 + 30 * 60;
        assert!(!windows.is_open(monday_0830_utc, 0));
        assert!(windows.is_open(monday_0830_utc, 120)); // 10:30 two hours east of UTC
        let utc = UpdateWindows {
            clock: WindowClock::Utc,
            ..windows.clone()
        };
        assert!(!utc.is_open(monday_0830_utc, 120));
        let garbled = UpdateWindows {
            clock: WindowClock::Utc,
            windows: vec!["whenever".into()],
        };
        assert!(!garbled.is_open(monday_0830_utc, 0));
    }

    #[test]
    fn the_clock_names() {
        assert_eq!("UTC".parse::<WindowClock>().unwrap(), WindowClock::Utc);
        assert_eq!("agent".parse::<WindowClock>().unwrap(), WindowClock::Agent);
        assert!("local".parse::<WindowClock>().is_err());
        assert_eq!(WindowClock::Agent.name(), "agent");
    }
}
