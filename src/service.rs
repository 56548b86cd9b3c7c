//! Telling systemd how a long-running command is doing (`Type=notify`):
//! READY once it works, WATCHDOG while it is alive, STATUS with what it is
//! doing. Without `NOTIFY_SOCKET` every call is a no-op.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Last watchdog ping, so frequent callers send at most a few a second.
static LAST_PING: Mutex<Option<Instant>> = Mutex::new(None);

/// Startup is over: the service works.
pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// The service is alive; pings at most every half of the watchdog period.
pub fn watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut last = LAST_PING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let due = last.is_none_or(|at| at.elapsed() >= (period / 2).min(Duration::from_secs(1)));
    if due {
        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        *last = Some(Instant::now());
    }
}

/// One line of what the service is doing, for `systemctl status`.
pub fn status(text: &str) {
    let line: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
}

/// The service is shutting down.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}
