//! Parsing one entry's fields: each known field checked against what its
//! column holds, the rest kept as `attributes`.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{ENTRY_MAX_BYTES, EntryId, Event, EventType, FIELDS_MAX, INDEXED_TEXT_MAX, YEARS};
use crate::text::{quoted, quoted_bytes};

/// `generation_type VARCHAR(20)`.
const GENERATION_TYPE_MAX: usize = 20;

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

/// Every spelling the fast read leaves alone, read by chrono's general
/// parsers: RFC 3339, offsets without a colon, a space for the `T`.
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
/// field: nearly every entry has it, so this is the parser's hot path and
/// chrono's general parser is too slow for it. Dates and times are checked
/// by chrono; any other spelling, and leap seconds, are left to
/// [`any_iso_time`], and where both read a text they agree (a test holds
/// them to it).
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
mod tests;
