//! Synthetic traffic that looks exactly like the service's producer wrote it.
//!
//! The demo, the tests and the benchmarks all feed on this, so it follows
//! the producer's habits: every value a string, Python's
//! `str(bool)` and naive `isoformat()` spellings, `''` for what it lacks,
//! `generation_id` often empty, and the stream entry ID taken at XADD time.
//!
//! Generation is a pure, seeded iterator that walks the window hour by hour
//! and keeps only the generations still in flight, so a run of millions of
//! entries needs memory for about one hour of traffic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::f64::consts::PI;

use chrono::{DateTime, Duration, Timelike, Utc};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use uuid::Uuid;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    /// Stream entries to produce, exactly.
    pub events: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub users: u32,
    pub seed: u64,
}

/// One stream entry as the producer would XADD it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Milliseconds of the XADD, which becomes the entry ID's time part.
    pub added_ms: i64,
    pub fields: Vec<(&'static str, String)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Python's `datetime.isoformat()` of a naive UTC datetime: no zone, and no
/// fraction at all when the microseconds are zero.
pub fn python_isoformat(at: DateTime<Utc>) -> String {
    if at.nanosecond() / 1000 == 0 {
        at.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

/// Python's `str(bool)`.
pub fn python_bool(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

struct Model {
    name: &'static str,
    share: f64,
    median_ms: f64,
    failure_rate: f64,
}

const MODELS: &[Model] = &[
    Model {
        name: "illustriousXL_v01",
        share: 0.35,
        median_ms: 24_000.0,
        failure_rate: 0.04,
    },
    Model {
        name: "sd_xl_base_1.0",
        share: 0.25,
        median_ms: 31_000.0,
        failure_rate: 0.06,
    },
    Model {
        name: "ponyDiffusionV6XL",
        share: 0.2,
        median_ms: 27_000.0,
        failure_rate: 0.05,
    },
    Model {
        name: "juggernautXL_v9",
        share: 0.12,
        median_ms: 38_000.0,
        failure_rate: 0.09,
    },
    Model {
        name: "dreamshaper_8",
        share: 0.08,
        median_ms: 9_000.0,
        failure_rate: 0.03,
    },
];

const GENERATION_TYPES: &[(&str, f64)] = &[
    ("standard", 0.55),
    ("comfyui", 0.25),
    ("batch", 0.1),
    ("priority", 0.1),
];

const ERRORS: &[(&str, &str)] = &[
    ("TimeoutError", "ComfyUI did not answer within 300 s"),
    (
        "ComfyUIConnectionError",
        "Connection refused by ComfyUI at 127.0.0.1:8188",
    ),
    (
        "OutOfMemoryError",
        "CUDA out of memory. Tried to allocate 2.00 GiB",
    ),
    ("ValidationError", "prompt exceeds 225 tokens"),
    (
        "ModelLoadError",
        "checkpoint could not be loaded: file is corrupt",
    ),
];

const DIMENSIONS: &[(u32, u32)] = &[
    (1024, 1024),
    (832, 1216),
    (1216, 832),
    (896, 1152),
    (768, 768),
    (512, 512),
];

/// Share of cancelled generations.
const CANCEL_RATE: f64 = 0.04;
/// Share of generations whose ID the service did not pass along.
const MISSING_GENERATION_ID: f64 = 0.4;
/// Share of completions written by the older, shorter call (no timing,
/// model or image fields).
const SHORT_COMPLETION: f64 = 0.15;
/// Share of failures reported with `duration_ms` "0".
const FAILURE_WITHOUT_DURATION: f64 = 0.6;
/// Share of requests that carry a `queue_length` sample.
const QUEUE_SAMPLE_RATE: f64 = 0.5;

/// Relative traffic at a UTC hour of day: peaks mid-afternoon, quietest
/// before dawn (about 1 : 5.7).
fn daily_rhythm(hour_of_day: u32) -> f64 {
    1.0 + 0.7 * (2.0 * PI * (f64::from(hour_of_day) - 15.0) / 24.0).cos()
}

/// An hour-long (or shorter, at the window's edges) slice of the window and
/// how many requests start in it.
struct Slot {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    requests: u64,
}

/// Splits `requests` over the window's hours in proportion to the daily
/// rhythm, by largest remainder, so the total is exact.
fn plan_slots(start: DateTime<Utc>, end: DateTime<Utc>, requests: u64) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut weights = Vec::new();
    let mut at = start;
    while at < end {
        let hour_start = crate::hour::floor(at);
        let slot_end = (hour_start + Duration::hours(1)).min(end);
        let covered = (slot_end - at).num_milliseconds() as f64 / 3_600_000.0;
        weights.push(daily_rhythm(hour_start.hour()) * covered);
        slots.push(Slot {
            start: at,
            end: slot_end,
            requests: 0,
        });
        at = slot_end;
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return slots;
    }
    let mut remainders = Vec::with_capacity(slots.len());
    let mut given = 0;
    for (index, (slot, weight)) in slots.iter_mut().zip(&weights).enumerate() {
        let exact = requests as f64 * weight / total;
        slot.requests = exact.floor() as u64;
        given += slot.requests;
        remainders.push((exact - exact.floor(), index));
    }
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, index) in remainders.iter().cycle().take((requests - given) as usize) {
        slots[index].requests += 1;
    }
    slots
}

/// An entry waiting for its time to come, ordered by time then creation.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at_us: i64,
    sequence: u64,
    entry: EntryBody,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct EntryBody {
    fields: Vec<(&'static str, String)>,
}

/// The seeded generator; iterate it for the entries in XADD order.
pub struct Traffic {
    spec: TrafficSpec,
    rng: ChaCha8Rng,
    users: Vec<Uuid>,
    user_cumulative: Vec<f64>,
    slots: std::vec::IntoIter<Slot>,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    ready: VecDeque<Entry>,
    sequence: u64,
    emitted: u64,
    last_us: i64,
}

impl Traffic {
    pub fn new(spec: TrafficSpec) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let users: Vec<Uuid> = (0..spec.users.max(1))
            .map(|_| random_uuid(&mut rng))
            .collect();
        // A few heavy users and a long tail, as real services have.
        let mut running = 0.0;
        let user_cumulative = (0..users.len())
            .map(|rank| {
                running += 1.0 / (rank as f64 + 1.0).powf(0.9);
                running
            })
            .collect();
        let requests = spec.events.div_ceil(2);
        let slots = plan_slots(spec.start, spec.end, requests).into_iter();
        Traffic {
            last_us: spec.start.timestamp_micros(),
            spec,
            rng,
            users,
            user_cumulative,
            slots,
            scheduled: BinaryHeap::new(),
            ready: VecDeque::new(),
            sequence: 0,
            emitted: 0,
        }
    }

    fn pick_user(&mut self) -> Uuid {
        let total = *self.user_cumulative.last().expect("at least one user");
        let point = self.rng.random_range(0.0..total);
        let index = self.user_cumulative.partition_point(|&c| c <= point);
        self.users[index.min(self.users.len() - 1)]
    }

    fn schedule(&mut self, at_us: i64, fields: Vec<(&'static str, String)>) {
        self.sequence += 1;
        self.scheduled.push(Reverse(Scheduled {
            at_us,
            sequence: self.sequence,
            entry: EntryBody { fields },
        }));
    }

    /// Fills `ready` with the next slot's entries; false when none are left.
    fn advance(&mut self) -> bool {
        let Some(slot) = self.slots.next() else {
            return false;
        };
        let (from, to) = (slot.start.timestamp_micros(), slot.end.timestamp_micros());
        let mut starts: Vec<i64> = (0..slot.requests)
            .map(|_| self.rng.random_range(from..to))
            .collect();
        starts.sort_unstable();
        let load = daily_rhythm(slot.start.hour());
        for at_us in starts {
            self.generation(at_us, load);
        }
        while let Some(Reverse(next)) = self.scheduled.peek() {
            if next.at_us >= to {
                break;
            }
            let Reverse(next) = self.scheduled.pop().expect("peeked");
            self.push_ready(next.at_us, next.entry.fields);
        }
        true
    }

    fn push_ready(&mut self, at_us: i64, fields: Vec<(&'static str, String)>) {
        // The XADD happens a moment after the event's own timestamp.
        let added_ms = at_us.div_euclid(1000) + self.rng.random_range(0..3);
        self.last_us = self.last_us.max(at_us);
        self.ready.push_back(Entry { added_ms, fields });
    }

    /// One generation: its request now, its completion or cancellation
    /// later, unless that falls after the window (still in flight).
    fn generation(&mut self, at_us: i64, load: f64) {
        let user = self.pick_user().to_string();
        let generation_id = if self.rng.random_bool(MISSING_GENERATION_ID) {
            String::new()
        } else {
            random_uuid(&mut self.rng).to_string()
        };
        let generation_type = pick(&mut self.rng, GENERATION_TYPES, |g| g.1).0;

        let mut request = vec![
            ("event_type", "request".to_string()),
            ("generation_id", generation_id.clone()),
            ("user_id", user.clone()),
            ("timestamp", python_isoformat(from_micros(at_us))),
            ("generation_type", generation_type.to_string()),
        ];
        if self.rng.random_bool(QUEUE_SAMPLE_RATE) {
            let mean = 1.0 + 8.0 * load;
            let noise: f64 = LogNormal::new(0.0, 0.4)
                .expect("valid")
                .sample(&mut self.rng);
            request.push(("queue_length", ((mean * noise).round() as i64).to_string()));
        }
        self.schedule(at_us, request);

        let end_us = self.spec.end.timestamp_micros();
        if self.rng.random_bool(CANCEL_RATE) {
            let after_us = self.rng.random_range(1_000_000..60_000_000);
            if at_us + after_us < end_us {
                let cancellation = vec![
                    ("event_type", "cancellation".to_string()),
                    ("generation_id", generation_id),
                    ("user_id", user),
                    ("timestamp", python_isoformat(from_micros(at_us + after_us))),
                ];
                self.schedule(at_us + after_us, cancellation);
            }
            return;
        }

        self.completion(at_us, generation_id, user, generation_type);
    }

    /// The completion of a generation that started at `at_us`, if it ends
    /// inside the window.
    fn completion(
        &mut self,
        at_us: i64,
        generation_id: String,
        user: String,
        generation_type: &str,
    ) {
        let end_us = self.spec.end.timestamp_micros();
        let model = pick(&mut self.rng, MODELS, |m| m.share);
        let duration_ms = (LogNormal::new(model.median_ms.ln(), 0.45)
            .expect("valid")
            .sample(&mut self.rng)
            .round() as i64)
            .clamp(500, 900_000);
        let done_us = at_us + duration_ms * 1000;
        if done_us >= end_us {
            return;
        }
        let success = !self.rng.random_bool(model.failure_rate);
        let batch_size = if generation_type == "batch" {
            self.rng.random_range(2..=8)
        } else {
            1
        };
        let (error_type, error_message) = if success {
            ("", "")
        } else {
            ERRORS[self.rng.random_range(0..ERRORS.len())]
        };
        let reported_ms = if !success && self.rng.random_bool(FAILURE_WITHOUT_DURATION) {
            0
        } else {
            duration_ms
        };
        let mut completion = vec![
            ("event_type", "completion".to_string()),
            ("generation_id", generation_id),
            ("user_id", user),
            ("timestamp", python_isoformat(from_micros(done_us))),
            ("duration_ms", reported_ms.to_string()),
            ("success", python_bool(success).to_string()),
            ("error_type", error_type.to_string()),
        ];
        if self.rng.random_bool(SHORT_COMPLETION) {
            if !success {
                completion.push(("error_message", error_message.to_string()));
                completion.push(("model_checkpoint", model.name.to_string()));
            }
        } else {
            let queue_wait_ms = (LogNormal::new(800f64.ln(), 0.8)
                .expect("valid")
                .sample(&mut self.rng)
                .round() as i64)
                .min(duration_ms / 2);
            let (width, height) = DIMENSIONS[self.rng.random_range(0..DIMENSIONS.len())];
            let prompt_tokens: u32 = self.rng.random_range(8..=220);
            completion.extend([
                ("error_message", error_message.to_string()),
                ("queue_wait_time_ms", queue_wait_ms.to_string()),
                (
                    "generation_time_ms",
                    if success {
                        (duration_ms - queue_wait_ms).to_string()
                    } else {
                        String::new()
                    },
                ),
                ("model_checkpoint", model.name.to_string()),
                (
                    "image_dimensions",
                    if success {
                        format!(r#"{{"width": {width}, "height": {height}}}"#)
                    } else {
                        String::new()
                    },
                ),
                ("batch_size", batch_size.to_string()),
                ("prompt_tokens", prompt_tokens.to_string()),
            ]);
        }
        self.schedule(done_us, completion);
    }

    /// Requests that started in the window's last moments and have not
    /// finished: they top the stream up to exactly the asked-for count.
    fn in_flight_request(&mut self) -> Entry {
        let end_us = self.spec.end.timestamp_micros();
        let at_us = if self.last_us + 1 < end_us {
            self.rng.random_range(self.last_us + 1..end_us)
        } else {
            self.last_us
        };
        let user = self.pick_user().to_string();
        let generation_type = pick(&mut self.rng, GENERATION_TYPES, |g| g.1).0;
        let fields = vec![
            ("event_type", "request".to_string()),
            ("generation_id", String::new()),
            ("user_id", user),
            ("timestamp", python_isoformat(from_micros(at_us))),
            ("generation_type", generation_type.to_string()),
        ];
        self.last_us = at_us;
        Entry {
            added_ms: at_us.div_euclid(1000),
            fields,
        }
    }
}

impl Iterator for Traffic {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.emitted >= self.spec.events {
            return None;
        }
        while self.ready.is_empty() {
            if !self.advance() {
                break;
            }
        }
        let entry = match self.ready.pop_front() {
            Some(entry) => entry,
            None => self.in_flight_request(),
        };
        self.emitted += 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.spec.events - self.emitted) as usize;
        (left, Some(left))
    }
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).expect("simulated times are in range")
}

fn random_uuid(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], weight: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut point = rng.random_range(0.0..total);
    for item in items {
        point -= weight(item);
        if point < 0.0 {
            return item;
        }
    }
    items.last().expect("non-empty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn spec(events: u64, hours: i64, seed: u64) -> TrafficSpec {
        let end = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
        TrafficSpec {
            events,
            start: end - Duration::hours(hours),
            end,
            users: 50,
            seed,
        }
    }

    #[test]
    fn python_spellings() {
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 14, 3, 7).unwrap();
        assert_eq!(python_isoformat(at), "2026-11-27T14:03:07");
        let at = at + Duration::microseconds(123_456);
        assert_eq!(python_isoformat(at), "2026-11-27T14:03:07.123456");
        let at =
            Utc.with_ymd_and_hms(2026, 11, 27, 14, 0, 50).unwrap() + Duration::milliseconds(500);
        assert_eq!(python_isoformat(at), "2026-11-27T14:00:50.500000");
        assert_eq!(python_bool(true), "True");
        assert_eq!(python_bool(false), "False");
    }

    #[test]
    fn produces_exactly_the_asked_count_in_time_order() {
        for (events, hours) in [(0, 1), (1, 1), (2, 1), (999, 3), (5_000, 24)] {
            let entries: Vec<Entry> = Traffic::new(spec(events, hours, 7)).collect();
            assert_eq!(entries.len() as u64, events);
            let spec = spec(events, hours, 7);
            for pair in entries.windows(2) {
                assert!(pair[0].added_ms <= pair[1].added_ms + 2);
            }
            for entry in &entries {
                let at = chrono::NaiveDateTime::parse_from_str(
                    entry.field("timestamp").unwrap(),
                    "%Y-%m-%dT%H:%M:%S%.f",
                )
                .unwrap()
                .and_utc();
                assert!(at >= spec.start && at < spec.end, "{at}");
            }
        }
    }

    #[test]
    fn same_seed_same_entries_other_seed_other_entries() {
        let a: Vec<Entry> = Traffic::new(spec(2_000, 5, 1)).collect();
        let b: Vec<Entry> = Traffic::new(spec(2_000, 5, 1)).collect();
        let c: Vec<Entry> = Traffic::new(spec(2_000, 5, 2)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn completions_pair_with_requests_and_follow_the_rhythm() {
        let entries: Vec<Entry> = Traffic::new(spec(40_000, 24, 3)).collect();
        let count = |kind: &str| {
            entries
                .iter()
                .filter(|e| e.field("event_type") == Some(kind))
                .count()
        };
        let (requests, completions, cancellations) =
            (count("request"), count("completion"), count("cancellation"));
        assert_eq!(requests + completions + cancellations, 40_000);
        assert!(requests >= completions + cancellations);
        let cancelled = cancellations as f64 / requests as f64;
        assert!((0.02..0.06).contains(&cancelled), "{cancelled}");
        let failed = entries
            .iter()
            .filter(|e| e.field("success") == Some("False"))
            .count() as f64
            / completions as f64;
        assert!((0.02..0.10).contains(&failed), "{failed}");
        // Busiest hour (15:00 UTC) sees several times the quietest (03:00).
        let in_hour = |h: &str| {
            entries
                .iter()
                .filter(|e| e.field("timestamp").unwrap()[11..13] == *h)
                .count()
        };
        assert!(in_hour("15") > 3 * in_hour("03"));
    }
}
