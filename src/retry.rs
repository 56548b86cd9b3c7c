//! Waiting out a server that went away: bounded exponential backoff that a
//! stop request cuts short, each attempt logged once with its cause, and
//! the systemd watchdog kept fed meanwhile (a process that waits for its
//! database is alive, not hung).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::service;

/// The first pause, and the longest.
const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(30);

/// Backoff for one kind of trouble; `reset` after a success.
#[derive(Debug)]
pub struct Backoff {
    what: &'static str,
    next: Duration,
    attempts: u32,
    since: Option<Instant>,
    stop: Arc<AtomicBool>,
}

impl Backoff {
    pub fn new(what: &'static str, stop: &Arc<AtomicBool>) -> Backoff {
        Backoff {
            what,
            next: FIRST,
            attempts: 0,
            since: None,
            stop: Arc::clone(stop),
        }
    }

    /// Logs the failure and sleeps the next pause; false when a stop was
    /// asked for (before or during the pause).
    pub fn wait(&mut self, cause: &anyhow::Error) -> bool {
        self.attempts += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        let cause = crate::error::one_line(cause);
        tracing::warn!(
            "{} (attempt {}, for {} s): {cause}; retrying in {:.1} s",
            self.what,
            self.attempts,
            since.elapsed().as_secs(),
            self.next.as_secs_f64()
        );
        service::status(&format!("{}: {cause}", self.what));
        let pause = self.next;
        self.next = (self.next * 2).min(LONGEST);
        sleep_unless_stopped(pause, &self.stop)
    }

    /// The trouble is over.
    pub fn reset(&mut self) {
        if self.attempts > 0 {
            tracing::warn!("{}: recovered after {} attempts", self.what, self.attempts);
        }
        self.next = FIRST;
        self.attempts = 0;
        self.since = None;
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Sleeps `pause` in short steps, feeding the watchdog; false if a stop
/// was asked for.
pub fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + pause;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        service::watchdog();
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest_and_reset_after_success() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut backoff = Backoff::new("test", &stop);
        let mut pauses = Vec::new();
        for _ in 0..10 {
            pauses.push(backoff.next);
            backoff.next = (backoff.next * 2).min(LONGEST);
        }
        assert_eq!(pauses[0], FIRST);
        assert_eq!(pauses[1], FIRST * 2);
        assert_eq!(*pauses.last().unwrap(), LONGEST);
        backoff.attempts = 3;
        backoff.reset();
        assert_eq!((backoff.next, backoff.attempts()), (FIRST, 0));
    }

    #[test]
    fn a_stop_cuts_the_pause_short() {
        let stop = Arc::new(AtomicBool::new(true));
        let started = Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(30), &stop));
        assert!(started.elapsed() < Duration::from_secs(1));
        let mut backoff = Backoff::new("test", &stop);
        assert!(!backoff.wait(&anyhow::anyhow!("down")));
    }
}
