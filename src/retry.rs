//! Waiting out a server that went away: bounded exponential backoff that a
//! stop request cuts short, each attempt logged once with its cause, and
//! the systemd watchdog kept fed meanwhile (a process that waits for its
//! database is alive, not hung).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::service;

/// The first pause, and the longest: short enough that work resumes within
/// about a second of the server accepting connections again; a refused
/// connection costs next to nothing.
const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(1);
/// While the cause stays the same, it is said again this often.
const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// Backoff for one kind of trouble; `recovered` once work resumes.
#[derive(Debug)]
pub struct Backoff {
    what: &'static str,
    next: Duration,
    attempts: u32,
    since: Option<Instant>,
    /// When the servers answered again, if they have.
    back: Option<Instant>,
    /// The cause last logged, and when.
    said: Option<(String, Instant)>,
    stop: Arc<AtomicBool>,
}

impl Backoff {
    pub fn new(what: &'static str, stop: &Arc<AtomicBool>) -> Backoff {
        Backoff {
            what,
            next: FIRST,
            attempts: 0,
            since: None,
            back: None,
            said: None,
            stop: Arc::clone(stop),
        }
    }

    /// Logs the failure (the first, a new cause, or the same one every
    /// 30 s) and sleeps the next pause; false when a stop was asked for
    /// (before or during the pause).
    pub fn wait(&mut self, cause: &anyhow::Error) -> bool {
        self.attempts += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        let cause = crate::error::one_line(cause);
        let say = self
            .said
            .as_ref()
            .is_none_or(|(said, at)| *said != cause || at.elapsed() >= REPEAT_EVERY);
        if say {
            tracing::warn!(
                "{} (attempt {}, for {}): {cause}; retrying every {} at most",
                self.what,
                self.attempts,
                crate::output::duration(since.elapsed().as_secs_f64() * 1_000.0),
                crate::output::duration(LONGEST.as_secs_f64() * 1_000.0),
            );
            self.said = Some((cause.clone(), Instant::now()));
        }
        service::status(&format!("{}: {cause}", self.what));
        let pause = self.next;
        self.next = (self.next * 2).min(LONGEST);
        sleep_unless_stopped(pause, &self.stop)
    }

    /// The servers answer again (work may not resume until there is some):
    /// the outage ended now.
    pub fn answered(&mut self) {
        if self.since.is_some() && self.back.is_none() {
            self.back = Some(Instant::now());
        }
    }

    /// The trouble is over: said with how long it lasted (until the servers
    /// answered again), when there was any.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since {
            let lasted = self.back.unwrap_or_else(Instant::now) - since;
            tracing::warn!(
                "{}: recovered after an outage of {} ({}); work resumed",
                self.what,
                crate::output::duration(lasted.as_secs_f64() * 1_000.0),
                crate::output::counted(u64::from(self.attempts), "attempt"),
            );
            service::status("working");
        }
        self.next = FIRST;
        self.attempts = 0;
        self.since = None;
        self.back = None;
        self.said = None;
    }
}

/// Sleeps `pause` in short steps, feeding the watchdog; false if a stop
/// was asked for.
pub fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) -> bool {
    sleep_checking(pause, stop, service::watchdog)
}

/// [`sleep_unless_stopped`] for a thread that must not feed systemd's
/// watchdog (its liveness is not the service's); `Duration::MAX` waits
/// for the stop.
pub fn pause(pause: Duration, stop: &AtomicBool) -> bool {
    sleep_checking(pause, stop, || {})
}

/// Sleeps `pause` in steps of at most 100 ms, calling `each` at every
/// step; false as soon as `stop` is set.
fn sleep_checking(pause: Duration, stop: &AtomicBool, each: impl Fn()) -> bool {
    let until = Instant::now().checked_add(pause);
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        each();
        let now = Instant::now();
        let left = match until {
            Some(until) if now >= until => return true,
            Some(until) => until - now,
            None => Duration::MAX,
        };
        std::thread::sleep(left.min(Duration::from_millis(100)));
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
        backoff.since = Some(Instant::now());
        backoff.recovered();
        assert_eq!((backoff.next, backoff.attempts), (FIRST, 0));
        assert!(backoff.since.is_none());
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
