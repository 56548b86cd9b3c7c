//! The wire format (SPEC §2) → a typed event, or the reason it cannot be
//! stored. Pure and total: any field map gives one or the other, never a
//! panic, which the property test below checks.
//!
//! Liberal in what is clearly meant (zones honoured, `true`/`1`, a missing
//! timestamp taken from the entry ID), strict in what is not (a number that
//! is not an integer, a UUID that is not one). Anything PostgreSQL would
//! refuse — a NUL character, a time outside its range — is refused here, so
//! a bad entry becomes a dead letter instead of failing a whole batch.

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// The three kinds of entry the producer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Request,
    Completion,
    Cancellation,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Request => "request",
            EventType::Completion => "completion",
            EventType::Cancellation => "cancellation",
        }
    }
}

/// One row of `generation_events`, minus what the database assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub stream_id: String,
    pub event_type: EventType,
    pub generation_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub timestamp: DateTime<Utc>,
    pub generation_type: Option<String>,
    pub duration_ms: Option<i32>,
    pub success: Option<bool>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub queue_wait_time_ms: Option<i32>,
    pub generation_time_ms: Option<i32>,
    pub model_checkpoint: Option<String>,
    pub image_dimensions: Option<Value>,
    pub batch_size: Option<i32>,
    pub prompt_tokens: Option<i32>,
    pub queue_length: Option<i32>,
    /// Fields the producer added that the schema has no column for.
    pub attributes: Option<Value>,
}

/// A stream entry that could not become a row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub stream_id: String,
    /// Every raw field, as a JSON object of strings.
    pub fields: Value,
    pub reason: String,
}

/// Consecutive stream entries, parsed, to be committed together.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub rejected: Vec<Rejection>,
    /// ID of the batch's last entry: the position once it is committed.
    pub last_id: String,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses entries as Redis returned them (bytes) into events and
    /// dead letters.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [(Vec<u8>, Vec<u8>)])>,
    ) -> Batch {
        let mut batch = Batch::default();
        for (id, raw) in entries {
            match parse_raw(id, raw) {
                Ok(event) => batch.events.push(event),
                Err(rejection) => batch.rejected.push(rejection),
            }
            batch.last_id = id.to_string();
        }
        batch
    }
}

/// [`parse`] for byte values: text that is not UTF-8 is a dead letter too.
pub fn parse_raw(stream_id: &str, raw: &[(Vec<u8>, Vec<u8>)]) -> Result<Event, Rejection> {
    let text: Option<Vec<(&str, &str)>> = raw
        .iter()
        .map(|(name, value)| {
            Some((
                std::str::from_utf8(name).ok()?,
                std::str::from_utf8(value).ok()?,
            ))
        })
        .collect();
    let outcome = match &text {
        Some(fields) => parse(stream_id, fields),
        None => Err("a field name or value is not valid UTF-8".to_string()),
    };
    outcome.map_err(|reason| Rejection {
        stream_id: stream_id.to_string(),
        fields: raw_fields_json(raw),
        reason,
    })
}

/// The raw fields as a JSON object PostgreSQL can store: invalid UTF-8 and
/// NUL characters become U+FFFD (the reason says what was wrong).
fn raw_fields_json(raw: &[(Vec<u8>, Vec<u8>)]) -> Value {
    let clean = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}");
    let mut map = serde_json::Map::new();
    for (name, value) in raw {
        map.entry(clean(name))
            .or_insert_with(|| Value::String(clean(value)));
    }
    Value::Object(map)
}

/// Fields with a column of their own; everything else goes to `attributes`.
const KNOWN_FIELDS: &[&str] = &[
    "event_type",
    "generation_id",
    "user_id",
    "timestamp",
    "generation_type",
    "duration_ms",
    "success",
    "error_type",
    "error_message",
    "queue_wait_time_ms",
    "generation_time_ms",
    "model_checkpoint",
    "image_dimensions",
    "batch_size",
    "prompt_tokens",
    "queue_length",
];

/// `generation_type VARCHAR(20)`.
const GENERATION_TYPE_MAX: usize = 20;

/// Parses one stream entry; `fields` are its name/value pairs in the order
/// Redis returned them.
pub fn parse<S: AsRef<str>>(stream_id: &str, fields: &[(S, S)]) -> Result<Event, String> {
    // A handful of fields: a vector beats a map, and allocates once.
    let mut map: Vec<(&str, &str)> = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let (name, value) = (name.as_ref(), value.as_ref());
        match map.iter().find(|(seen, _)| *seen == name) {
            Some((_, previous)) if *previous != value => {
                return Err(format!(
                    "field {name} appears twice with different values ({} and {})",
                    quoted(previous),
                    quoted(value)
                ));
            }
            Some(_) => {}
            None => map.push((name, value)),
        }
    }
    for (name, value) in &map {
        if name.contains('\0') || value.contains('\0') {
            return Err(format!(
                "field {} contains a NUL character, which PostgreSQL text cannot hold",
                name.replace('\0', "\\0")
            ));
        }
    }
    let get = |name: &str| {
        map.iter()
            .find(|(field, _)| *field == name)
            .map(|(_, value)| *value)
            .filter(|v| !v.is_empty())
    };

    let event_type = match get("event_type") {
        Some("request") => EventType::Request,
        Some("completion") => EventType::Completion,
        Some("cancellation") => EventType::Cancellation,
        Some(other) => {
            return Err(format!(
                "event_type {} is not request, completion or cancellation",
                quoted(other)
            ));
        }
        None => return Err("event_type is missing".to_string()),
    };
    let timestamp = match get("timestamp") {
        Some(text) => parse_timestamp(text)?,
        None => entry_id_time(stream_id)?,
    };
    let generation_type = get("generation_type").map(str::to_string);
    if let Some(kind) = &generation_type
        && kind.chars().count() > GENERATION_TYPE_MAX
    {
        return Err(format!(
            "generation_type {} is longer than {GENERATION_TYPE_MAX} characters",
            quoted(kind)
        ));
    }
    let image_dimensions = get("image_dimensions").map(parse_json).transpose()?;
    let attributes: serde_json::Map<String, Value> = map
        .iter()
        .filter(|(name, _)| !KNOWN_FIELDS.contains(name))
        .map(|(name, value)| ((*name).to_string(), Value::String((*value).to_string())))
        .collect();

    Ok(Event {
        stream_id: stream_id.to_string(),
        event_type,
        generation_id: get("generation_id")
            .map(|v| parse_uuid("generation_id", v))
            .transpose()?,
        user_id: get("user_id")
            .map(|v| parse_uuid("user_id", v))
            .transpose()?,
        timestamp,
        generation_type,
        duration_ms: count(get, "duration_ms")?,
        success: get("success").map(parse_bool).transpose()?,
        error_type: get("error_type").map(str::to_string),
        error_message: get("error_message").map(str::to_string),
        queue_wait_time_ms: count(get, "queue_wait_time_ms")?,
        generation_time_ms: count(get, "generation_time_ms")?,
        model_checkpoint: get("model_checkpoint").map(str::to_string),
        image_dimensions,
        batch_size: count(get, "batch_size")?,
        prompt_tokens: count(get, "prompt_tokens")?,
        queue_length: count(get, "queue_length")?,
        attributes: (!attributes.is_empty()).then_some(Value::Object(attributes)),
    })
}

/// A value for a reason message, shortened so one wild field cannot make
/// the reason unreadable.
fn quoted(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() <= MAX {
        format!("'{value}'")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("'{head}…'")
    }
}

fn parse_uuid(name: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value.trim()).map_err(|_| format!("{name} {} is not a UUID", quoted(value)))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim() {
        "True" | "true" | "1" => Ok(true),
        "False" | "false" | "0" => Ok(false),
        _ => Err(format!(
            "success {} is not True, False, true, false, 1 or 0",
            quoted(value)
        )),
    }
}

/// A non-negative integer that fits an `INT` column.
fn count<'a>(get: impl Fn(&str) -> Option<&'a str>, name: &str) -> Result<Option<i32>, String> {
    let Some(value) = get(name) else {
        return Ok(None);
    };
    let number: i64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{name} {} is not an integer", quoted(value)))?;
    if number < 0 {
        return Err(format!("{name} {} is negative", quoted(value)));
    }
    i32::try_from(number)
        .map(Some)
        .map_err(|_| format!("{name} {} is too large", quoted(value)))
}

fn parse_json(value: &str) -> Result<Value, String> {
    let json: Value = serde_json::from_str(value).map_err(|err| {
        format!(
            "image_dimensions {} is not valid JSON ({err})",
            quoted(value)
        )
    })?;
    if holds_nul(&json) {
        return Err(
            "image_dimensions contains a NUL character, which PostgreSQL JSONB cannot hold".into(),
        );
    }
    Ok(json)
}

fn holds_nul(json: &Value) -> bool {
    match json {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Naive ISO 8601 is UTC (what Python's `isoformat()` writes); an explicit
/// `Z` or offset is honoured; a space instead of `T` (Python's `str()`) is
/// accepted.
pub fn parse_timestamp(value: &str) -> Result<DateTime<Utc>, String> {
    let text = value.trim();
    // The producer's own spelling first: it is by far the most common.
    let parsed = text
        .parse::<NaiveDateTime>()
        .map(|at| at.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(text).map(|at| at.with_timezone(&Utc)))
        .or_else(|_| {
            DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z")
                .map(|at| at.with_timezone(&Utc))
        })
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|at| at.and_utc())
        })
        .map_err(|_| format!("timestamp {} is not an ISO 8601 time", quoted(value)))?;
    check_range(parsed).map_err(|()| format!("timestamp {} is outside 1900–9999", quoted(value)))
}

fn check_range(at: DateTime<Utc>) -> Result<DateTime<Utc>, ()> {
    if (1900..=9999).contains(&at.year()) {
        Ok(at)
    } else {
        Err(())
    }
}

/// The time an entry was added, from its ID's millisecond part.
pub fn entry_id_time(stream_id: &str) -> Result<DateTime<Utc>, String> {
    stream_id
        .split_once('-')
        .map_or(stream_id, |(ms, _)| ms)
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .and_then(|at| check_range(at).ok())
        .ok_or_else(|| {
            format!("timestamp is empty and the entry ID {stream_id} carries no usable time")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn ok(pairs: &[(&str, &str)]) -> Event {
        parse("1795821600000-0", &fields(pairs)).unwrap()
    }

    fn rejected(pairs: &[(&str, &str)]) -> String {
        parse("1795821600000-0", &fields(pairs)).unwrap_err()
    }

    fn at(text: &str) -> DateTime<Utc> {
        ok(&[("event_type", "request"), ("timestamp", text)]).timestamp
    }

    #[test]
    fn timestamps_naive_utc_with_and_without_fraction_or_zone() {
        let base = Utc.with_ymd_and_hms(2026, 11, 27, 14, 3, 7).unwrap();
        assert_eq!(at("2026-11-27T14:03:07"), base);
        assert_eq!(
            at("2026-11-27T14:03:07.123456"),
            base + chrono::Duration::microseconds(123_456)
        );
        assert_eq!(at("2026-11-27T14:03:07Z"), base);
        assert_eq!(at("2026-11-27T16:03:07+02:00"), base);
        assert_eq!(
            at("2026-11-27T14:03:07.5-01:30"),
            base + chrono::Duration::minutes(90) + chrono::Duration::milliseconds(500)
        );
        assert_eq!(at("2026-11-27 14:03:07"), base);
    }

    #[test]
    fn an_empty_or_missing_timestamp_takes_the_entry_id_time() {
        let id_time = Utc.timestamp_millis_opt(1_795_821_600_000).unwrap();
        assert_eq!(at(""), id_time);
        assert_eq!(ok(&[("event_type", "request")]).timestamp, id_time);
    }

    #[test]
    fn booleans_in_every_accepted_spelling() {
        for (text, want) in [
            ("True", true),
            ("true", true),
            ("1", true),
            ("False", false),
            ("false", false),
            ("0", false),
        ] {
            let event = ok(&[("event_type", "completion"), ("success", text)]);
            assert_eq!(event.success, Some(want), "{text}");
        }
        assert!(
            rejected(&[("event_type", "completion"), ("success", "yes")]).contains("success 'yes'")
        );
    }

    #[test]
    fn empty_and_missing_values_are_null() {
        let event = ok(&[
            ("event_type", "completion"),
            ("generation_id", ""),
            ("duration_ms", ""),
            ("success", ""),
            ("error_type", ""),
            ("image_dimensions", ""),
        ]);
        assert_eq!(event.generation_id, None);
        assert_eq!(event.user_id, None);
        assert_eq!(event.duration_ms, None);
        assert_eq!(event.success, None);
        assert_eq!(event.error_type, None);
        assert_eq!(event.image_dimensions, None);
        assert_eq!(event.attributes, None);
    }

    #[test]
    fn the_producers_full_completion() {
        let event = ok(&[
            ("event_type", "completion"),
            ("generation_id", "00000000-0000-0000-0000-00000000002a"),
            ("user_id", "6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11"),
            ("timestamp", "2026-11-27T14:02:40.000001"),
            ("duration_ms", "51230"),
            ("success", "True"),
            ("error_type", ""),
            ("error_message", ""),
            ("queue_wait_time_ms", "1200"),
            ("generation_time_ms", "50030"),
            ("model_checkpoint", "illustriousXL_v01"),
            ("image_dimensions", "{\"width\": 832, \"height\": 1216}"),
            ("batch_size", "2"),
            ("prompt_tokens", "45"),
            ("queue_length", "7"),
            ("gpu", "A100"),
        ]);
        assert_eq!(event.event_type, EventType::Completion);
        assert_eq!(event.generation_id.unwrap().as_u128(), 42);
        assert_eq!(event.duration_ms, Some(51_230));
        assert_eq!(event.queue_wait_time_ms, Some(1_200));
        assert_eq!(event.generation_time_ms, Some(50_030));
        assert_eq!(event.batch_size, Some(2));
        assert_eq!(event.prompt_tokens, Some(45));
        assert_eq!(event.queue_length, Some(7));
        assert_eq!(event.model_checkpoint.as_deref(), Some("illustriousXL_v01"));
        assert_eq!(
            event.image_dimensions,
            Some(serde_json::json!({"width": 832, "height": 1216}))
        );
        assert_eq!(event.attributes, Some(serde_json::json!({"gpu": "A100"})));
    }

    #[test]
    fn malformed_values_are_rejected_with_the_field_and_value() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("event_type", "retry")], "event_type 'retry'"),
            (&[], "event_type is missing"),
            (
                &[("event_type", "request"), ("user_id", "bob")],
                "user_id 'bob' is not a UUID",
            ),
            (
                &[("event_type", "request"), ("generation_id", "42")],
                "generation_id '42'",
            ),
            (
                &[("event_type", "request"), ("timestamp", "yesterday")],
                "timestamp 'yesterday'",
            ),
            (
                &[
                    ("event_type", "request"),
                    ("timestamp", "0001-01-01T00:00:00"),
                ],
                "outside",
            ),
            (
                &[("event_type", "completion"), ("duration_ms", "-5")],
                "duration_ms '-5' is negative",
            ),
            (
                &[("event_type", "completion"), ("duration_ms", "4.5")],
                "duration_ms '4.5' is not an integer",
            ),
            (
                &[("event_type", "completion"), ("batch_size", "99999999999")],
                "batch_size '99999999999' is too large",
            ),
            (
                &[("event_type", "request"), ("queue_length", "many")],
                "queue_length 'many'",
            ),
            (
                &[
                    ("event_type", "completion"),
                    ("image_dimensions", "{width: 1}"),
                ],
                "image_dimensions '{width: 1}' is not valid JSON",
            ),
            (
                &[
                    ("event_type", "request"),
                    ("generation_type", "a-very-long-generation-type"),
                ],
                "longer than 20",
            ),
            (
                &[("event_type", "request"), ("error_message", "nul\0here")],
                "NUL",
            ),
            (
                &[
                    ("event_type", "request"),
                    ("image_dimensions", "{\"w\": \"\\u0000\"}"),
                ],
                "NUL",
            ),
            (
                &[("event_type", "request"), ("event_type", "completion")],
                "appears twice",
            ),
        ];
        for (pairs, want) in cases {
            let reason = rejected(pairs);
            assert!(reason.contains(want), "{pairs:?}: {reason}");
        }
    }

    #[test]
    fn an_unusable_entry_id_time_is_a_reason_not_a_panic() {
        let reason =
            parse("99999999999999999-0", &fields(&[("event_type", "request")])).unwrap_err();
        assert!(reason.contains("entry ID"), "{reason}");
    }

    proptest! {
        #[test]
        fn arbitrary_field_maps_never_panic(
            id in "[0-9]{0,20}-[0-9]{0,3}|\\PC*",
            pairs in proptest::collection::vec(("\\PC{0,12}|event_type|timestamp|success|duration_ms|user_id|image_dimensions", "\\PC{0,40}|request|completion|True|-1|[0-9]{1,12}|\\{.*\\}"), 0..12),
        ) {
            let _ = parse(&id, &pairs);
        }

        #[test]
        fn any_valid_naive_timestamp_round_trips(secs in 0i64..4_000_000_000, micros in 0u32..1_000_000) {
            let want = DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let text = crate::traffic::python_isoformat(want);
            prop_assert_eq!(parse_timestamp(&text), Ok(want));
        }
    }
}
