//! CronJob schedules as upstream parses them (robfig/cron's standard
//! parser): five fields or a descriptor such as `@hourly`, in the CronJob's
//! `timeZone` (the controller's local zone, UTC here, without one); and the
//! times upstream derives from them: the most recent time a Job was due,
//! how many were missed, and when the next one is.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// So many missed start times are reported as TooManyMissedTimes.
pub const TOO_MANY_MISSED: u32 = 100;

#[derive(Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parses `schedule` in `time_zone`; the error is upstream's event text.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|e| format!("invalid timeZone: {name:?}: {e}"))?
            }
        };
        // robfig/cron knows @midnight too; croner does not.
        let pattern = if schedule.trim().eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            schedule
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("unparseable schedule: {schedule:?} : {e}"))?;
        Ok(Self { cron, zone })
    }

    fn zoned(&self, t: Timestamp) -> Zoned {
        t.to_zoned(self.zone.clone())
    }

    /// The first time after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&self.zoned(t), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The most recent time in `(earliest, now]` and how many times fell
    /// there (counted up to one past TOO_MANY_MISSED), as upstream's
    /// mostRecentScheduleTime.
    pub fn most_recent(&self, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, u32) {
        let mut missed = 0;
        let mut t = earliest;
        while missed <= TOO_MANY_MISSED {
            match self.next_after(t) {
                Some(next) if next <= now => {
                    missed += 1;
                    t = next;
                }
                _ => return ((missed > 0).then_some(t), missed),
            }
        }
        let latest = self
            .cron
            .find_previous_occurrence(&self.zoned(now), true)
            .ok()
            .map(|z| z.timestamp());
        (latest, missed)
    }

    /// The scheduled time as the Job's annotation shows it: RFC 3339 in
    /// the schedule's zone.
    pub fn format(&self, t: Timestamp) -> String {
        self.zoned(t).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn five_fields_and_descriptors_parse_and_seconds_do_not() {
        for ok in [
            "*/1 * * * *",
            "0 3 * * 1-5",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
        ] {
            assert!(Schedule::parse(ok, None).is_ok(), "{ok}");
        }
        for bad in ["* * * *", "0 * * * * *", "61 * * * *", "@sometimes"] {
            let err = Schedule::parse(bad, None).unwrap_err();
            assert!(
                err.starts_with(&format!("unparseable schedule: {bad:?} : ")),
                "{err}"
            );
        }
        assert!(Schedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn the_next_time_is_in_the_schedules_zone() {
        let s = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            s.next_after(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T07:00:00Z"))
        );
        assert_eq!(
            s.format(at("2026-07-01T07:00:00Z")),
            "2026-07-01T09:00:00+02:00"
        );
        let utc = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            utc.next_after(at("2026-07-01T10:00:00Z")),
            Some(at("2026-07-01T11:00:00Z"))
        );
    }

    #[test]
    fn the_most_recent_time_counts_the_missed_ones() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let (t, missed) = s.most_recent(at("2026-07-01T10:00:00Z"), at("2026-07-01T10:17:00Z"));
        assert_eq!((t, missed), (Some(at("2026-07-01T10:15:00Z")), 3));
        let (t, missed) = s.most_recent(at("2026-07-01T10:00:00Z"), at("2026-07-01T10:04:00Z"));
        assert_eq!((t, missed), (None, 0));
        // A time exactly at `now` is due; one exactly at `earliest` is past.
        let (t, _) = s.most_recent(at("2026-07-01T10:00:00Z"), at("2026-07-01T10:05:00Z"));
        assert_eq!(t, Some(at("2026-07-01T10:05:00Z")));
        let every = Schedule::parse("* * * * *", None).unwrap();
        let (t, missed) = every.most_recent(at("2026-07-01T00:00:00Z"), at("2026-07-02T00:00:30Z"));
        assert_eq!(t, Some(at("2026-07-02T00:00:00Z")));
        assert!(missed > TOO_MANY_MISSED);
    }
}
