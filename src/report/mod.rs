//! The reports as typed values, computed by pure functions from what the
//! database returns (`db::reports` fetches the hourly parts): one file per
//! report, with the window and the figures' arithmetic beside them.
//! Renderers (`render/`) print them; nothing here queries or prints.

pub mod dashboard;
pub mod failures;
pub mod figures;
pub mod fresh;
pub mod models;
pub mod overview;
pub mod peak;
pub mod trends;
pub mod user;
pub mod window;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub use figures::{HourPart, failure_rate, round2, success_rate};
pub use window::Window;

/// "Overview, last 7 days: 2026-11-20 00:00 → 2026-11-27 00:00 UTC".
pub fn heading(what: &str, days: u32, start: DateTime<Utc>, end: DateTime<Utc>, tz: Tz) -> String {
    let local = |at: DateTime<Utc>| at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let zone = if tz == chrono_tz::UTC {
        "UTC".to_string()
    } else {
        tz.name().to_string()
    };
    format!(
        "{what}, last {days} day{}: {} → {} {zone}",
        if days == 1 { "" } else { "s" },
        local(start),
        local(end),
    )
}

/// Footnotes for figures that leave the original service's hours out.
pub fn partial_notes(
    percentiles_partial: bool,
    users_lower_bound: bool,
    legacy_hours: i64,
) -> Vec<String> {
    let mut notes = Vec::new();
    if percentiles_partial {
        notes.push(format!(
            "percentiles leave out {legacy_hours} hour{} rolled up by the original service (they have no duration histogram)",
            if legacy_hours == 1 { "" } else { "s" }
        ));
    }
    if users_lower_bound {
        notes.push(
            "users is a lower bound: hours rolled up by the original service have no user list"
                .to_string(),
        );
    }
    notes
}
