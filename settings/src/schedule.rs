//! Cron schedules (GC's), parsed the same way by the server and the operator.

use croner::parser::{CronParser, Seconds};
pub use croner::Cron;

/// A schedule in cron syntax: `MIN HOUR DOM MON DOW`, or with seconds first.
pub fn parse_schedule(s: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(s)
        .map_err(|e| format!("{s:?}: {e}"))
}
