//! The wire format (SPEC §2) → a typed event, or the reason it cannot be
//! stored. Pure and total: any bytes give one or the other, never a panic,
//! in time linear in the entry's size and field count (the property tests
//! below check both).
//!
//! Liberal in what is clearly meant (zones honoured, `true`/`1`, a missing
//! timestamp taken from the entry ID), strict in what is not (a number that
//! is not an integer, a UUID that is not one). Anything PostgreSQL would
//! refuse — a NUL character, bytes that are not UTF-8, a number no column
//! holds, a value longer than an index entry may be — is refused here, so a
//! bad entry becomes a dead letter instead of failing its batch. (What this
//! misses, PostgreSQL still catches: `db::events` isolates such rows.)

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::stream::EntryId;
use crate::text::{quoted, quoted_bytes};

/// Longest `model_checkpoint` or `error_type`, in bytes. Both are indexed,
/// and a btree entry holds at most about 2.7 kB; a checkpoint file name or
/// an exception class is far shorter than this.
pub const INDEXED_TEXT_MAX: usize = 1_024;

/// Largest entry stored as an event, in bytes of field names and values.
/// Larger ones become dead letters (kept whole), so one giant entry cannot
/// blow a transfer's memory up three times over while it is encoded.
pub const ENTRY_MAX_BYTES: usize = 16 << 20;
/// [`ENTRY_MAX_BYTES`] for people.
pub const ENTRY_MAX_BYTES_TEXT: &str = "16 MiB";

/// Most fields an event may have. A producer writes about fifteen; an
/// entry with hundreds of thousands would make one `attributes` value of
/// them, so it becomes a dead letter (kept whole) instead.
pub const FIELDS_MAX: usize = 10_000;

/// `generation_type VARCHAR(20)`.
const GENERATION_TYPE_MAX: usize = 20;

/// Earliest and latest year of a time genalytics stores: within what every
/// part of the pipeline (rollup hours, reports, flags) handles.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=9999;

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
    pub stream_id: EntryId,
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

/// An entry's raw fields, exactly as Redis returned them, in order.
pub type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// A stream entry that could not become a row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub stream_id: EntryId,
    pub fields: RawFields,
    pub reason: String,
    /// The fields were cut as they were read (the entry was too large).
    pub cut: bool,
}

/// The fields with a column of their own; everything else goes to
/// `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    EventType,
    GenerationId,
    UserId,
    Timestamp,
    GenerationType,
    DurationMs,
    Success,
    ErrorType,
    ErrorMessage,
    QueueWaitTimeMs,
    GenerationTimeMs,
    ModelCheckpoint,
    ImageDimensions,
    BatchSize,
    PromptTokens,
    QueueLength,
}

const FIELD_COUNT: usize = 16;

impl Field {
    fn of(name: &str) -> Option<Field> {
        Some(match name {
            "event_type" => Field::EventType,
            "generation_id" => Field::GenerationId,
            "user_id" => Field::UserId,
            "timestamp" => Field::Timestamp,
            "generation_type" => Field::GenerationType,
            "duration_ms" => Field::DurationMs,
            "success" => Field::Success,
            "error_type" => Field::ErrorType,
            "error_message" => Field::ErrorMessage,
            "queue_wait_time_ms" => Field::QueueWaitTimeMs,
            "generation_time_ms" => Field::GenerationTimeMs,
            "model_checkpoint" => Field::ModelCheckpoint,
            "image_dimensions" => Field::ImageDimensions,
            "batch_size" => Field::BatchSize,
            "prompt_tokens" => Field::PromptTokens,
            "queue_length" => Field::QueueLength,
            _ => return None,
        })
    }
}

/// Field values by name: a slot per known field, the rest in order.
struct Fields<'a> {
    known: [Option<&'a str>; FIELD_COUNT],
    extra: serde_json::Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// A known field's value; `''` is the same as absent.
    fn get(&self, field: Field) -> Option<&'a str> {
        self.known[field as usize].filter(|value| !value.is_empty())
    }
}

/// Checks that a name or value can be PostgreSQL text.
fn text(bytes: &[u8]) -> Result<&str, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not valid UTF-8")?;
    if bytes.contains(&0) {
        return Err("contains a NUL character, which PostgreSQL text cannot hold");
    }
    Ok(text)
}

/// Sorts the fields out in one pass: a slot lookup per known name, a hash
/// lookup per other name, so 100,000 fields cost 100,000 steps.
fn collect<N: AsRef<[u8]>, V: AsRef<[u8]>>(raw: &[(N, V)]) -> Result<Fields<'_>, String> {
    let size: usize = raw
        .iter()
        .map(|(name, value)| name.as_ref().len() + value.as_ref().len())
        .sum();
    if size > ENTRY_MAX_BYTES {
        return Err(format!(
            "the entry holds {size} bytes, more than the {ENTRY_MAX_BYTES} genalytics stores as one event"
        ));
    }
    // Fields without a column become JSON text, where a control character
    // takes six bytes: counted so, an entry cannot grow past the limit
    // there either.
    let escaped: usize = raw
        .iter()
        .map(|(_, value)| {
            let value = value.as_ref();
            value.len() + 5 * value.iter().filter(|&&b| b < 0x20).count()
        })
        .sum();
    if escaped > ENTRY_MAX_BYTES {
        return Err(format!(
            "the entry's values take {escaped} bytes as JSON text, more than the {ENTRY_MAX_BYTES} \
             genalytics stores as one event"
        ));
    }
    if raw.len() > FIELDS_MAX {
        return Err(format!(
            "the entry has {} fields, more than the {FIELDS_MAX} genalytics stores as one event",
            raw.len()
        ));
    }
    let mut fields = Fields {
        known: [None; FIELD_COUNT],
        extra: serde_json::Map::new(),
    };
    for (name, value) in raw {
        let (name, value) = (name.as_ref(), value.as_ref());
        let name =
            text(name).map_err(|why| format!("the field name {} {why}", quoted_bytes(name)))?;
        let value = text(value).map_err(|why| format!("field {} {why}", quoted(name)))?;
        let twice = |previous: &str| {
            format!(
                "field {} appears twice with different values ({} and {})",
                quoted(name),
                quoted(previous),
                quoted(value)
            )
        };
        match Field::of(name) {
            Some(field) => match fields.known[field as usize] {
                Some(previous) if previous != value => return Err(twice(previous)),
                Some(_) => {}
                None => fields.known[field as usize] = Some(value),
            },
            None => match fields.extra.get(name) {
                Some(Value::String(previous)) if previous != value => {
                    return Err(twice(previous));
                }
                Some(_) => {}
                None => {
                    fields
                        .extra
                        .insert(name.to_string(), Value::String(value.to_string()));
                }
            },
        }
    }
    Ok(fields)
}

/// Parses one stream entry; `raw` is its name/value pairs in the order
/// Redis returned them.
pub fn parse<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    stream_id: EntryId,
    raw: &[(N, V)],
) -> Result<Event, String> {
    let fields = collect(raw)?;
    let get = |field| fields.get(field);

    let event_type = match get(Field::EventType) {
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
    let timestamp = match get(Field::Timestamp) {
        Some(text) => parse_timestamp(text)?,
        None => entry_id_time(stream_id)?,
    };
    let generation_type = get(Field::GenerationType)
        .map(|kind| {
            if kind.chars().count() > GENERATION_TYPE_MAX {
                Err(format!(
                    "generation_type {} is longer than {GENERATION_TYPE_MAX} characters",
                    quoted(kind)
                ))
            } else {
                Ok(kind.to_string())
            }
        })
        .transpose()?;
    let indexed = |field: Field, name: &str| {
        get(field)
            .map(|value| {
                if value.len() > INDEXED_TEXT_MAX {
                    Err(format!(
                        "{name} {} is longer than the {INDEXED_TEXT_MAX} bytes an indexed column takes",
                        quoted(value)
                    ))
                } else {
                    Ok(value.to_string())
                }
            })
            .transpose()
    };
    let uuid = |field: Field, name: &str| {
        get(field)
            .map(|value| {
                Uuid::parse_str(value.trim())
                    .map_err(|_| format!("{name} {} is not a UUID", quoted(value)))
            })
            .transpose()
    };
    let count = |field: Field, name: &str| get(field).map(|v| count(name, v)).transpose();

    Ok(Event {
        stream_id,
        event_type,
        generation_id: uuid(Field::GenerationId, "generation_id")?,
        user_id: uuid(Field::UserId, "user_id")?,
        timestamp,
        generation_type,
        duration_ms: count(Field::DurationMs, "duration_ms")?,
        success: get(Field::Success).map(parse_bool).transpose()?,
        error_type: indexed(Field::ErrorType, "error_type")?,
        error_message: get(Field::ErrorMessage).map(str::to_string),
        queue_wait_time_ms: count(Field::QueueWaitTimeMs, "queue_wait_time_ms")?,
        generation_time_ms: count(Field::GenerationTimeMs, "generation_time_ms")?,
        model_checkpoint: indexed(Field::ModelCheckpoint, "model_checkpoint")?,
        image_dimensions: get(Field::ImageDimensions).map(parse_json).transpose()?,
        batch_size: count(Field::BatchSize, "batch_size")?,
        prompt_tokens: count(Field::PromptTokens, "prompt_tokens")?,
        queue_length: count(Field::QueueLength, "queue_length")?,
        attributes: (!fields.extra.is_empty()).then(|| Value::Object(fields.extra)),
    })
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
fn count(name: &str, value: &str) -> Result<i32, String> {
    let trimmed = value.trim();
    let (negative, digits) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} {} is not an integer", quoted(value)));
    }
    // Leading zeros are fine (and "-0" is zero); anything past i32 is too large.
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(format!("{name} {} is negative", quoted(value)));
    }
    significant.parse::<i32>().map_err(|_| {
        format!(
            "{name} {} is too large for its column (at most {})",
            quoted(value),
            i32::MAX
        )
    })
}

/// Longest `image_dimensions`: `{"width": 832, "height": 1216}` is 30
/// bytes, and a parsed JSON value costs many times its text.
pub const IMAGE_DIMENSIONS_MAX: usize = 64 << 10;

fn parse_json(value: &str) -> Result<Value, String> {
    if value.len() > IMAGE_DIMENSIONS_MAX {
        return Err(format!(
            "image_dimensions {} is longer than the {} KiB genalytics stores",
            quoted(value),
            IMAGE_DIMENSIONS_MAX >> 10
        ));
    }
    let json: Value = serde_json::from_str(value).map_err(|err| {
        format!(
            "image_dimensions {} is not valid JSON ({err})",
            quoted(value)
        )
    })?;
    check_json(&json)?;
    Ok(json)
}

/// What JSONB refuses that JSON allows: a NUL character in a string, a
/// number outside PostgreSQL's `numeric`.
fn check_json(json: &Value) -> Result<(), String> {
    match json {
        Value::String(s) if s.contains('\0') => Err(
            "image_dimensions contains a NUL character, which PostgreSQL JSONB cannot hold".into(),
        ),
        Value::Number(n) if !fits_numeric(&n.to_string()) => Err(format!(
            "image_dimensions holds the number {}, which PostgreSQL numeric cannot hold",
            quoted(&n.to_string())
        )),
        Value::Array(items) => items.iter().try_for_each(check_json),
        Value::Object(map) => map.iter().try_for_each(|(key, value)| {
            if key.contains('\0') {
                return Err(
                    "image_dimensions contains a NUL character, which PostgreSQL JSONB cannot hold"
                        .into(),
                );
            }
            check_json(value)
        }),
        _ => Ok(()),
    }
}

/// Whether a JSON number's text fits `numeric`: at most 131,072 digits
/// before the decimal point and 16,383 after it.
fn fits_numeric(number: &str) -> bool {
    let unsigned = number.trim_start_matches('-');
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()),
        None => (unsigned, Some(0)),
    };
    let Some(exponent) = exponent else {
        // An exponent too long for i64 is far outside numeric anyway,
        // unless the mantissa is zero.
        return mantissa.bytes().all(|b| b == b'0' || b == b'.');
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    if whole.is_empty() && fraction.is_empty() {
        return true;
    }
    let before = whole.len() as i64 + exponent;
    let after = fraction.len() as i64 - exponent;
    before <= 131_072 && after <= 16_383
}

/// Naive ISO 8601 is UTC (what Python's `isoformat()` writes); an explicit
/// `Z` or offset (`+05:30` or `+0530`) is honoured; a space instead of `T`
/// (Python's `str()`) is accepted.
pub fn parse_timestamp(value: &str) -> Result<DateTime<Utc>, String> {
    let text = value.trim();
    let parsed = match producer_time(text) {
        Some(at) => at,
        None => any_iso_time(text)
            .map_err(|_| format!("timestamp {} is not an ISO 8601 time", quoted(value)))?,
    };
    in_range(parsed).ok_or_else(|| {
        format!(
            "timestamp {} is outside the years {}–{}",
            quoted(value),
            YEARS.start(),
            YEARS.end()
        )
    })
}

/// Every spelling the fast read leaves alone is still taken as before:
/// RFC 3339, offsets without a colon, a space for the `T`.
fn any_iso_time(text: &str) -> chrono::ParseResult<DateTime<Utc>> {
    let spaced = text.replacen(' ', "T", 1);
    spaced
        .parse::<NaiveDateTime>()
        .map(|at| at.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(&spaced).map(|at| at.with_timezone(&Utc)))
        .or_else(|_| {
            DateTime::parse_from_str(&spaced, "%Y-%m-%dT%H:%M:%S%.f%z")
                .map(|at| at.with_timezone(&Utc))
        })
}

/// The producer's own spelling, Python's `isoformat()` of a UTC time
/// (`2026-11-28T19:03:32` and `.123456`; `T` or a space), read field by
/// field: nearly every entry's, where chrono's general parser cost a tenth
/// of transfer's work. Dates and times are still checked by chrono; any
/// other spelling, and leap seconds, are left to [`any_iso_time`], and
/// where both read a text they agree (a test holds them to it).
fn producer_time(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let (fixed, fraction) = bytes.split_at_checked(19)?;
    if !(fixed[4] == b'-'
        && fixed[7] == b'-'
        && matches!(fixed[10], b'T' | b' ')
        && fixed[13] == b':'
        && fixed[16] == b':')
    {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0_u32, |n, &digit| {
            digit
                .is_ascii_digit()
                .then(|| n * 10 + u32::from(digit - b'0'))
        })
    };
    let nanos = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10_u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let second = number(&fixed[17..19])?;
    if second > 59 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(&fixed[0..4])?).ok()?,
        number(&fixed[5..7])?,
        number(&fixed[8..10])?,
    )?;
    let time = chrono::NaiveTime::from_hms_nano_opt(
        number(&fixed[11..13])?,
        number(&fixed[14..16])?,
        second,
        nanos,
    )?;
    Some(date.and_time(time).and_utc())
}

/// `at`, if its year is one genalytics stores. A leap second (`…:59:60.5`,
/// which chrono keeps as such) becomes the next second's, as PostgreSQL
/// reads it.
pub fn in_range(at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::{Datelike, Timelike};
    let at = match at.nanosecond().checked_sub(1_000_000_000) {
        Some(nanos) => DateTime::from_timestamp(at.timestamp().checked_add(1)?, nanos)?,
        None => at,
    };
    YEARS.contains(&at.year()).then_some(at)
}

/// The time an entry was added, from its ID's millisecond part.
fn entry_id_time(stream_id: EntryId) -> Result<DateTime<Utc>, String> {
    stream_id.time().and_then(in_range).ok_or_else(|| {
        format!("timestamp is empty and the entry ID {stream_id} carries no usable time")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_would_grow_past_the_limit_as_json_are_refused() {
        let id = EntryId::ZERO;
        let long = format!("[{}]", "0,".repeat(40_000) + "0");
        let err = parse(
            id,
            &[
                ("event_type", "request"),
                ("image_dimensions", long.as_str()),
            ],
        )
        .unwrap_err();
        assert!(err.contains("longer than the 64 KiB"), "{err}");
        let controls = "\u{1}".repeat(3 << 20);
        let err = parse(
            id,
            &[("event_type", "request"), ("note", controls.as_str())],
        )
        .unwrap_err();
        assert!(err.contains("as JSON text"), "{err}");
        let fine = "x".repeat(3 << 20);
        assert!(parse(id, &[("event_type", "request"), ("note", fine.as_str())]).is_ok());
    }

    #[test]
    fn the_entry_limit_reads_as_it_is() {
        assert_eq!(
            ENTRY_MAX_BYTES_TEXT,
            format!("{} MiB", ENTRY_MAX_BYTES >> 20)
        );
    }
    use chrono::TimeZone;
    use proptest::prelude::*;

    const ID: EntryId = EntryId {
        ms: 1_795_821_600_000,
        seq: 0,
    };

    fn ok(pairs: &[(&str, &str)]) -> Event {
        parse(ID, pairs).unwrap()
    }

    fn rejected(pairs: &[(&str, &str)]) -> String {
        parse(ID, pairs).unwrap_err()
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
        assert_eq!(at("2026-11-27T19:33:07+0530"), base);
        assert_eq!(at("2026-11-27 19:33:07.000+0530"), base);
        assert_eq!(
            at("2026-11-27T14:03:07.5-01:30"),
            base + chrono::Duration::minutes(90) + chrono::Duration::milliseconds(500)
        );
        assert_eq!(at("2026-11-27 14:03:07"), base);
        assert_eq!(
            at("9999-12-31T23:59:59"),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
        );
    }

    #[test]
    fn a_leap_second_is_the_next_seconds_start() {
        let midnight = Utc.with_ymd_and_hms(2017, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            at("2016-12-31T23:59:60.5"),
            midnight + chrono::Duration::milliseconds(500)
        );
        assert_eq!(at("2016-12-31T23:59:60Z"), midnight);
        // Past the last second genalytics stores: refused, not wrapped.
        let refused = parse(
            ID,
            &[
                ("event_type", "request"),
                ("timestamp", "9999-12-31T23:59:60"),
            ],
        );
        assert!(refused.unwrap_err().contains("outside the years"));
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
    fn numbers_are_integers_that_fit_their_column() {
        let value = |text: &str| {
            parse(ID, &[("event_type", "completion"), ("batch_size", text)]).map(|e| e.batch_size)
        };
        assert_eq!(value("0"), Ok(Some(0)));
        assert_eq!(value(" 007 "), Ok(Some(7)));
        assert_eq!(value("+3"), Ok(Some(3)));
        assert_eq!(value("2147483647"), Ok(Some(i32::MAX)));
        assert_eq!(value("0000000000000000000000002"), Ok(Some(2)));
        assert_eq!(value("-0"), Ok(Some(0)));
        for (text, want) in [
            ("2147483648", "too large"),
            ("99999999999999999999999999999", "too large"),
            ("-1", "negative"),
            ("1e3", "not an integer"),
            ("٣", "not an integer"),
            ("--1", "not an integer"),
        ] {
            let reason = value(text).unwrap_err();
            assert!(reason.contains(want), "{text}: {reason}");
        }
    }

    #[test]
    fn json_numbers_are_kept_exactly_and_checked_against_numeric() {
        let dims = |text: &str| {
            parse(
                ID,
                &[("event_type", "completion"), ("image_dimensions", text)],
            )
            .map(|e| e.image_dimensions.unwrap().to_string())
        };
        assert_eq!(
            dims(
                "{\"w\": 123456789012345678901234567890, \"r\": 0.1000000000000000055511151231257827}"
            ),
            Ok(
                "{\"w\":123456789012345678901234567890,\"r\":0.1000000000000000055511151231257827}"
                    .to_string()
            )
        );
        assert_eq!(dims("[1e400]"), Ok("[1e+400]".to_string()));
        assert!(dims("[1e131073]").unwrap_err().contains("numeric"));
        assert!(dims("[1e-16384]").unwrap_err().contains("numeric"));
        assert!(dims("[0e99999999999999999999]").is_ok());
        assert!(fits_numeric("-12.50"));
        assert!(!fits_numeric("1e99999999999999999999"));
    }

    #[test]
    fn malformed_values_are_rejected_with_the_field_and_value() {
        let long = "m".repeat(INDEXED_TEXT_MAX + 1);
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
                &[
                    ("event_type", "request"),
                    ("timestamp", "+10000-01-01T00:00:00Z"),
                ],
                "timestamp",
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
                &[("event_type", "completion"), ("model_checkpoint", &long)],
                "model_checkpoint",
            ),
            (
                &[("event_type", "completion"), ("error_type", &long)],
                "indexed column",
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
            (
                &[("event_type", "request"), ("gpu", "a"), ("gpu", "b")],
                "field 'gpu' appears twice",
            ),
            (
                &[("event_type", "request"), ("nul\0name", "x")],
                "'nul\\0name' contains a NUL",
            ),
        ];
        for (pairs, want) in cases {
            let reason = rejected(pairs);
            assert!(reason.contains(want), "{pairs:?}: {reason}");
            assert!(!reason.contains('\0'), "{reason:?}");
            assert!(reason.len() < 400, "{reason}");
        }
    }

    #[test]
    fn reasons_never_carry_control_characters_or_invalid_text() {
        let reason = parse(
            ID,
            &[
                (b"event_type".to_vec(), b"request".to_vec()),
                (b"event_type".to_vec(), b"completion\0\x1b[2J".to_vec()),
            ],
        )
        .unwrap_err();
        assert!(reason.contains("NUL"), "{reason}");
        let reason = parse(
            ID,
            &[
                (b"event_type".to_vec(), b"request".to_vec()),
                (b"gp\xffu".to_vec(), b"x".to_vec()),
            ],
        )
        .unwrap_err();
        assert_eq!(reason, "the field name 'gp\\xffu' is not valid UTF-8");
        let reason = rejected(&[("event_type", "\u{1b}]0;pwned\u{7}")]);
        assert!(!reason.chars().any(char::is_control), "{reason}");
    }

    #[test]
    fn identical_repeats_are_one_field() {
        let event = ok(&[
            ("event_type", "request"),
            ("event_type", "request"),
            ("gpu", "a"),
            ("gpu", "a"),
        ]);
        assert_eq!(event.attributes, Some(serde_json::json!({"gpu": "a"})));
    }

    #[test]
    fn an_unusable_entry_id_time_is_a_reason_not_a_panic() {
        let id = EntryId {
            ms: 99_999_999_999_999_999,
            seq: 0,
        };
        let reason = parse(id, &[("event_type", "request")]).unwrap_err();
        assert!(reason.contains("entry ID"), "{reason}");
    }

    #[test]
    fn an_oversized_entry_is_refused_before_it_is_copied() {
        let huge = vec![b'x'; ENTRY_MAX_BYTES];
        let reason = parse(
            ID,
            &[
                (b"event_type".to_vec(), b"request".to_vec()),
                (b"blob".to_vec(), huge),
            ],
        )
        .unwrap_err();
        assert!(reason.contains("more than the"), "{reason}");
    }

    #[test]
    fn an_entry_of_too_many_fields_is_refused() {
        let fields = |n: usize| {
            std::iter::once(("event_type".to_string(), "request".to_string()))
                .chain((1..n).map(|i| (format!("extra_{i}"), "v".to_string())))
                .collect::<Vec<_>>()
        };
        let event = parse(ID, &fields(FIELDS_MAX)).unwrap();
        assert_eq!(
            event.attributes.unwrap().as_object().unwrap().len(),
            FIELDS_MAX - 1
        );
        let reason = parse(ID, &fields(FIELDS_MAX + 1)).unwrap_err();
        assert!(reason.contains("10001 fields"), "{reason}");
    }

    #[test]
    fn the_producers_spellings_take_the_fast_read_and_the_rest_fall_through() {
        // The fast read is used for what the producer writes…
        for text in [
            "2026-11-28T19:03:32",
            "2026-11-28 19:03:32",
            "2026-11-28T19:03:32.1",
            "2026-11-28T19:03:32.123456",
            "2026-11-28 19:03:32.123456789",
            "0000-01-01T00:00:00",
            "9999-12-31T23:59:59.999999999",
            "2024-02-29T00:00:00",
        ] {
            let fast = producer_time(text);
            assert!(fast.is_some(), "{text:?} missed the fast read");
            assert_eq!(fast.map(Ok), Some(any_iso_time(text)), "{text:?}");
        }
        // …and leaves everything else to chrono, whatever it makes of it.
        for text in [
            "2016-12-31T23:59:60",
            "2016-12-31T23:59:60.5",
            "2026-11-28T19:03:32.1234567891",
            "2026-11-28T19:03:32.",
            "2026-11-28T19:03:32Z",
            "2026-11-28T19:03:32+00:00",
            "2026-11-28t19:03:32",
            "2026-11-28T24:00:00",
            "2026-02-29T00:00:00",
            "+2026-11-28T19:03:32",
            "-2026-11-28T19:03:32",
            "2026-1-28T19:03:32.12",
            "2026-11-28T19:03:3",
            "2026-11-28T19:03:32 ",
            "2026-11-28T19:03:32.-1",
            "2026-11-28T19:03:32.+1",
            "2026\u{2212}11-28T19:03:32",
            "２０２６-11-28T19:03:32",
        ] {
            assert_eq!(producer_time(text), None, "{text:?}");
        }
    }

    #[test]
    fn any_character_anywhere_in_the_producers_spelling_never_panics() {
        // Multi-byte characters (2, 3 and 4 bytes, and digits that are not
        // ASCII) over each byte, and inserted before each byte, so that the
        // fixed positions 4, 7, 10, 13, 16 and 19 fall inside a character.
        let base = "2026-11-28T19:03:32.123456";
        let odd = [
            "é", "\u{2212}", "٣", "０", "😀", " ", "T", ".", "-", ":", "9", "\0",
        ];
        let mut texts = Vec::new();
        for at in 0..=base.len() {
            for c in odd {
                texts.push(format!("{}{c}{}", &base[..at], &base[at..]));
                if at < base.len() {
                    texts.push(format!("{}{c}{}", &base[..at], &base[at + 1..]));
                }
            }
        }
        for text in &texts {
            if let Some(fast) = producer_time(text) {
                assert_eq!(Ok(fast), any_iso_time(text), "{text:?}");
            }
            // The whole path, as an entry's field.
            let _ = parse_timestamp(text);
        }
    }

    proptest! {
        /// The fast read of the producer's spelling agrees with chrono's
        /// wherever it reads a text (and leaves the rest to it).
        #[test]
        fn the_producers_time_reads_as_chrono_reads_it(
            text in prop_oneof![
                "[0-9]{4}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?",
                "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}[.,0-9Z+-]{0,12}",
                "[0-9T:. +-]{19,30}",
            ],
        ) {
            if let Some(fast) = producer_time(&text) {
                prop_assert_eq!(Ok(fast), any_iso_time(&text), "{:?}", text);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_reasons_stay_clean(
            ms in proptest::num::u64::ANY,
            pairs in proptest::collection::vec(
                (
                    prop_oneof![
                        Just(b"event_type".to_vec()), Just(b"timestamp".to_vec()),
                        Just(b"success".to_vec()), Just(b"duration_ms".to_vec()),
                        Just(b"user_id".to_vec()), Just(b"image_dimensions".to_vec()),
                        proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                    ],
                    prop_oneof![
                        Just(b"request".to_vec()), Just(b"completion".to_vec()),
                        Just(b"True".to_vec()), Just(b"-1".to_vec()),
                        "[0-9]{1,25}".prop_map(String::into_bytes),
                        "\\{.*\\}".prop_map(String::into_bytes),
                        proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                    ],
                ),
                0..16,
            ),
        ) {
            match parse(EntryId { ms, seq: 0 }, &pairs) {
                Ok(event) => {
                    prop_assert!(in_range(event.timestamp).is_some());
                }
                Err(reason) => {
                    prop_assert!(!reason.chars().any(char::is_control), "{:?}", reason);
                }
            }
        }

        #[test]
        fn any_valid_naive_timestamp_round_trips(secs in -2_208_988_800i64..4_000_000_000, micros in 0u32..1_000_000) {
            let want = DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let text = crate::traffic::python_isoformat(want);
            prop_assert_eq!(parse_timestamp(&text), Ok(want));
        }
    }
}
