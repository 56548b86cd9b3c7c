//! Events a test writes, knowing what each one is, so expectations can be
//! computed in plain Rust from them rather than read back through the SQL
//! under test.

use chrono::{DateTime, Duration, Utc};
use rand::{RngExt, SeedableRng};

use super::{TestEnv, xadd};

/// One event the test writes.
#[derive(Debug, Clone)]
pub struct Written {
    pub at: DateTime<Utc>,
    pub kind: &'static str,
    pub user: Option<String>,
    pub duration_ms: Option<i64>,
    pub success: Option<bool>,
    pub batch_size: Option<i64>,
    pub queue_length: Option<i64>,
    pub model: Option<String>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
}

impl Written {
    pub fn new(at: DateTime<Utc>, kind: &'static str) -> Written {
        Written {
            at,
            kind,
            user: None,
            duration_ms: None,
            success: None,
            batch_size: None,
            queue_length: None,
            model: None,
            error_type: None,
            error_message: None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.kind == "completion" && self.success == Some(true)
    }

    pub fn is_failure(&self) -> bool {
        self.kind == "completion" && self.success == Some(false)
    }

    /// The producer's fields for this event.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("event_type", self.kind.to_string()),
            (
                "timestamp",
                self.at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            ),
            ("user_id", self.user.clone().unwrap_or_default()),
        ];
        let mut optional = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                fields.push((name, value));
            }
        };
        optional("duration_ms", self.duration_ms.map(|d| d.to_string()));
        optional(
            "success",
            self.success
                .map(|s| if s { "True" } else { "False" }.to_string()),
        );
        optional("batch_size", self.batch_size.map(|b| b.to_string()));
        optional("queue_length", self.queue_length.map(|q| q.to_string()));
        optional("model_checkpoint", self.model.clone());
        optional("error_type", self.error_type.clone());
        optional("error_message", self.error_message.clone());
        fields
    }
}

const MODELS: &[&str] = &[
    "illustriousXL_v01",
    "sd_xl_base_1.0",
    "model, \"quoted\"\nnewline ü",
];
const ERRORS: &[(&str, &str)] = &[
    ("TimeoutError", "took longer than 300 s"),
    ("OutOfMemoryError", "CUDA out of memory, \"2 GiB\""),
    ("ValidationError", "prompt too long\nsecond line"),
];

/// Random traffic in `[hour, hour + 1h)`, in time order: requests,
/// successes (some without a duration), failures (half with duration 0,
/// some without an error type), completions without an outcome,
/// cancellations, users (some missing), models (some missing), batch sizes
/// and queue samples.
pub fn traffic(hour: DateTime<Utc>, n: usize, seed: u64) -> Vec<Written> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let users: Vec<String> = (0..25)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let mut events: Vec<Written> = (0..n)
        .map(|_| {
            let at = hour + Duration::microseconds(rng.random_range(0..3_600_000_000));
            let roll: f64 = rng.random();
            let mut event = if roll < 0.45 {
                Written::new(at, "request")
            } else if roll < 0.8 {
                Written {
                    duration_ms: rng.random_bool(0.95).then(|| rng.random_range(1..200_000)),
                    success: Some(true),
                    ..Written::new(at, "completion")
                }
            } else if roll < 0.9 {
                let (error_type, message) = ERRORS[rng.random_range(0..ERRORS.len())];
                Written {
                    duration_ms: Some(if rng.random_bool(0.5) {
                        0
                    } else {
                        rng.random_range(1..50_000)
                    }),
                    success: Some(false),
                    error_type: rng.random_bool(0.9).then(|| error_type.to_string()),
                    error_message: rng.random_bool(0.8).then(|| message.to_string()),
                    ..Written::new(at, "completion")
                }
            } else if roll < 0.93 {
                Written {
                    duration_ms: Some(rng.random_range(1..9_000)),
                    ..Written::new(at, "completion")
                }
            } else {
                Written::new(at, "cancellation")
            };
            event.user = rng
                .random_bool(0.9)
                .then(|| users[rng.random_range(0..users.len())].clone());
            if event.kind == "completion" {
                event.batch_size = rng.random_bool(0.7).then(|| rng.random_range(1..9));
                event.model = rng
                    .random_bool(0.85)
                    .then(|| MODELS[rng.random_range(0..MODELS.len())].to_string());
            }
            event.queue_length = rng.random_bool(0.3).then(|| rng.random_range(0..40));
            event
        })
        .collect();
    events.sort_by_key(|e| e.at);
    events
}

/// Writes events with entry IDs after everything already in the stream.
pub fn write(env: &TestEnv, events: &[Written]) {
    let mut con = env.redis();
    let key = env.stream_key();
    for event in events {
        let fields = event.fields();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xadd(&mut con, &key, "*", &pairs);
    }
}

/// How many of `events` `f` holds for.
pub fn count(events: &[Written], f: impl Fn(&Written) -> bool) -> i64 {
    events.iter().filter(|e| f(e)).count() as i64
}

/// The successful completions' durations, sorted: what an hour's exact
/// percentiles are taken over.
pub fn success_durations(events: &[Written]) -> Vec<i64> {
    let mut durations: Vec<i64> = events
        .iter()
        .filter(|e| e.is_success())
        .filter_map(|e| e.duration_ms)
        .collect();
    durations.sort_unstable();
    durations
}

/// `percentile_cont`, computed here.
pub fn percentile(sorted: &[i64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] as f64 + (sorted[hi] - sorted[lo]) as f64 * (rank - lo as f64))
}
